"""Stack definition files (harness.stacks, stacks/README.md): the built-ins load, a broken file
gives an error naming the file and the key (also through the CLI), and per-transaction
accounting folds into the comparison's CDR rows (harness.stack_cdr)."""
import os
import textwrap

import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.stack_cdr import fold, read_transactions
from harness.stacks import STACKS, StackError, expectation, load_file, stack

GOOD = """
name: legacy-prod
stage: 0
start:
  command: ["{python}", /opt/ims/run.py]
  cwd: "{workdir}/ims"
  env: {SERVER_IP: "{address}"}
users: {file: "{workdir}/ims/data/users.json"}
cdr: {format: csv34, dir: "{workdir}/ims/CDR"}
"""


def write(tmp_path, text: str) -> str:
    path = os.path.join(tmp_path, "stack.yaml")
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(text))
    return path


def test_builtin_stacks_are_definitions_of_the_one_model():
    assert list(STACKS) == ["0", "1", "2", "2-sippy", "kamailio"]
    assert [stack(n).entry for n in (0, 1, 2, "2-sippy")] == ["run.py", "run_refactored.py", "run_sippy.py",
                                                               "run_sippy.py"]
    k = stack("kamailio")
    assert "kamailio" in k.command and k.reference and k.relay == "ims-rtpproxy" and k.cdr.format == "transactions"
    assert k.stage is None and expectation({2: {"audio": "two-way"}}, "kamailio") is None
    assert all(st.builtin and os.path.isfile(st.path) for st in STACKS.values())


def test_a_good_operator_file_loads(tmp_path):
    st = load_file(write(tmp_path, GOOD))
    assert st.name == "legacy-prod" and st.stage == 0 and st.command[1] == "/opt/ims/run.py"
    assert st.cdr.dir == "{workdir}/ims/CDR" and not st.ims_env and not st.registrations_mml


@pytest.mark.parametrize("change, key, words", [
    (("start:\n  command:", "start:\n  comand:"), "start.comand", "unknown key"),
    (('command: ["{python}", /opt/ims/run.py]', "command: /opt/ims/run.py"), "start.command", "list of strings"),
    (('{SERVER_IP: "{address}"}', '{SERVER_IP: "{adress}"}'), "start.env.SERVER_IP", "unknown placeholder {adress}"),
    (("stage: 0", "stage: 7"), "stage", "must be one of 0, 1, 2"),
    (("format: csv34", "format: cdr-json"), "cdr.format", "must be one of csv34, transactions, none"),
    (("cdr: {format: csv34,", "cdr: {format: transactions,"), "cdr.dir", "only for cdr.format csv34"),
    (("name: legacy-prod", "name: legacy prod"), "name", "letters, digits"),
    (("users: {file:", "users: {path:"), "users.path", "unknown key"),
    (("stage: 0\n", "stage: 0\nrelay: rtpengine\n"), "relay", "none, ims-rtpproxy"),
    (("  cwd:", "  ready: {log: '('}\n  cwd:"), "start.ready.log", "not a regular expression"),
])
def test_a_broken_file_names_the_key(tmp_path, change, key, words):
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(StackError) as err:
        load_file(path)
    text = str(err.value)
    assert text.startswith(os.path.relpath(path)) and f": {key}: " in text and words in text, text


def test_missing_start_and_not_yaml(tmp_path):
    with pytest.raises(StackError, match=r"start.command: missing"):
        load_file(write(tmp_path, "name: x\n"))
    with pytest.raises(StackError, match="not YAML"):
        load_file(write(tmp_path, "name: [x\n"))
    with pytest.raises(StackError, match=r"cdr.columns: lacks code, reason"):
        load_file(write(tmp_path, "name: x\nstart: {command: [x]}\ncdr: {format: transactions, files: a, "
                                  "columns: [method, callid, from_user, to_user, src_ip]}\n"))


def test_the_cli_reports_a_broken_stack_file_before_running_anything(tmp_path):
    path = write(tmp_path, GOOD.replace("format: csv34", "format: cdr-json"))
    result = CliRunner().invoke(cli, ["compare", "--stage", "2", "--baseline-stack", path, "--scenario", "no-nat"])
    assert result.exit_code == 2
    assert "cdr.format: must be one of csv34, transactions, none, got 'cdr-json'" in result.output
    assert os.path.relpath(path) in result.output
    result = CliRunner().invoke(cli, ["run", "--stack", "kamailio-nope", "--scenario", "no-nat"])
    assert result.exit_code == 2 and "unknown stack 'kamailio-nope'" in result.output


# what Kamailio's acc wrote through db_flatstore in a both-cone lab run (stacks/kamailio/ims.cfg)
ACC = """\
BYE|83c9bdf7ba4b|4cb0b91d788e|call-1|200|OK|1795609097|1795609097.135760|1001|1002|198.51.100.114||||3 BYE|
REGISTER|0a99a74ac37b||reg-4fd0|200|OK|1795609095|1795609095.408623|1001|1001|198.51.100.114||sip:1001@10.23.1.10:5060|300|2 REGISTER|1001
REGISTER|0a99a74ac37b||reg-4fd0|200|OK|1795609155|1795609155.408623|1001|1001|198.51.100.114||sip:1001@10.23.1.10:5060|300|3 REGISTER|1001
REGISTER|a74a397b3b97||reg-d57d|200|OK|1795609095|1795609095.417465|1002|1002|198.51.100.115||sip:1002@10.23.2.20:5060|300|2 REGISTER|1002
INVITE|83c9bdf7ba4b|4cb0b91d788e|call-1|200|OK|1795609095|1795609095.630197|1001|1002|198.51.100.114|198.51.100.115|||2 INVITE|1001
INVITE|f00199b0899f|3f74d96685a0|call-2|486|Busy Here|1795609098|1795609098.123274|1001|1002|198.51.100.114|198.51.100.115|||2 INVITE|1001
INVITE|aa|bb|call-3|487|Request Terminated|1795609099|1795609099.1|1001|1002|198.51.100.114|198.51.100.115|||2 INVITE|1001
INVITE|aa|bb|call-4|200|OK|1795609100|1795609100.1|1001|1002|198.51.100.114|198.51.100.115|||2 INVITE|1001
INVITE|aa|bb|call-5|404|Not Found|1795609101|1795609101.1|1001|1999|198.51.100.114||||2 INVITE|1001
"""


def test_acc_transactions_fold_into_cdr_rows(tmp_path):
    os.makedirs(os.path.join(tmp_path, "acc"))
    with open(os.path.join(tmp_path, "acc", "acc_1.log"), "w") as fh:
        fh.write(ACC + "a|short|line\n")
    rows = read_transactions(os.path.join(tmp_path, "acc", "acc_*.log"), "|", stack("kamailio").cdr.columns)
    kinds = [(r["record_type"], r["call_state"], r["status_code"]) for r in rows]
    # one REGISTER row per Call-ID (the refresh leaves none), the call with its BYE, the busy and
    # the cancelled call, in the order of the events that close them (the call at its BYE, after
    # both REGISTERs though its line comes first); the answered call without BYE (call-4) has no
    # row yet, the call the server refused itself (call-5, not relayed) none at all
    assert kinds == [("REGISTER", "SUCCESS", "200"), ("REGISTER", "SUCCESS", "200"), ("CALL", "ENDED", "200"),
                     ("CALL", "FAILED", "486"), ("CALL", "CANCELLED", "")]
    ended = rows[2]
    assert (ended["caller_number"], ended["callee_number"], ended["caller_ip"], ended["callee_ip"]) == \
        ("1001", "1002", "198.51.100.114", "198.51.100.115")
    assert ended["cseq"] == "3 BYE" and ended["termination_reason"] == "Normal"
    assert ended["extra_info"] == "auth_user=1001" and rows[0]["extra_info"] == ""
    assert rows[0]["caller_number"] == "1001" and rows[0]["callee_number"] == "" and rows[0]["expires"] == "300"
    assert rows[3]["termination_reason"] == "486 Busy Here" and rows[4]["cseq"] == "2 CANCEL"
    assert fold([]) == []


def test_reference_differences_are_narrow_and_only_for_reference_stacks():
    from harness.compare import judge
    ref = {"steps": {"call": 200}, "audio": {"direction": "two-way"},
           "nat": {"registrar": ["sip:1001@sip.local -> sip:1001@<alice>:5060 received=sip:<alice-public>:5060"]},
           "cdr": [{"record_type": "CALL", "call_state": "ENDED", "codec": "", "contact": "sip:1001@<alice>:5060"}]}
    ours = {"steps": {"call": 200}, "audio": {"direction": "two-way"},
            "nat": {"registrar": ["sip:1001@sip.local -> sip:1001@<alice-public>:<port>"]},
            "cdr": [{"record_type": "CALL", "call_state": "ENDED", "codec": "PCMU",
                     "contact": "sip:1001@<alice-public>:<port>"}]}
    v = judge("x", [ref, ref], [ours], reference=True)
    assert v.verdict == "changed" and set(v.accepted) == {"contact-as-sent", "acc-without-sdp-and-body"}
    # either direction (Kamailio as the candidate)
    assert judge("x", [ours, ours], [ref], reference=True).verdict == "changed"
    # not between our own stages
    assert judge("x", [ref, ref], [ours]).accepted == []
    # another user's or another party's address is not covered
    wrong = {**ours, "nat": {"registrar": ["sip:1001@sip.local -> sip:1001@<bob-public>:<port>"]},
             "cdr": [{**ours["cdr"][0], "contact": "sip:1002@<alice-public>:<port>"}]}
    assert "contact-as-sent" not in judge("x", [ref, ref], [wrong], reference=True).accepted
