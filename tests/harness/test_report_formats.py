"""Report formats (table, JSON, JUnit, Markdown) from verdicts on synthetic observations."""
import json
import xml.etree.ElementTree as ET

from harness.compare import go_no_go, judge
from harness.report import HEADERS, render


def obs(audio="two-way", call=200, via=("INVITE received=<alice-public> rport=5060",)):
    return {"steps": {"register": 200, "call": call}, "audio": {"direction": audio},
            "nat": {"via_to_alice": list(via)}, "cdr": [{"record_type": "CALL", "call_state": "ENDED"}]}


def verdicts():
    return [judge("same-one", [obs(), obs()], [obs()]),
            judge("better-one", [obs("A->B only"), obs("A->B only")], [obs()]),
            judge("broken-one", [obs(), obs()], [obs("none")]),
            judge("fixups-one", [obs(via=()), obs(via=())], [obs()])]


META = {"candidate": 2, "baseline": 0, "backend": "netns", "seconds": 12.5}


def test_table_has_every_column_and_the_go_line():
    vs = verdicts()
    go, summary = go_no_go(vs)
    text = render("table", vs, summary, META)
    header = text.splitlines()[0]
    for col in HEADERS:
        assert col in header
    assert not go and summary.startswith("NO-GO") and "broken-one" in summary
    lines = {line.split()[0]: line for line in text.splitlines()[2:] if line.strip() and not line.startswith(("NO-GO", "GO"))}
    assert lines["broken-one"].rstrip().endswith("REGRESSED")
    assert lines["better-one"].rstrip().endswith("improved")
    assert "changed: Via rcvd/rport" in lines["fixups-one"] and lines["fixups-one"].rstrip().endswith("same")
    assert text.rstrip().splitlines()[-1] == summary


def test_json_report_round_trips():
    vs = verdicts()
    go, summary = go_no_go(vs)
    data = json.loads(render("json", vs, summary, META))
    assert data["go"] is False and data["summary"] == summary and data["meta"]["candidate"] == 2
    by_name = {s["scenario"]: s for s in data["scenarios"]}
    assert by_name["broken-one"]["verdict"] == "REGRESSED"
    assert any("audio two-way -> none" in r for r in by_name["broken-one"]["reasons"])
    assert set(by_name["same-one"]) >= {"baseline", "candidate", "audio", "nat_fixups", "cdr", "noise_fields"}


def test_junit_counts_regressions_as_failures():
    vs = verdicts()
    _, summary = go_no_go(vs)
    root = ET.fromstring(render("junit", vs, summary, META))
    assert root.tag == "testsuite" and root.get("tests") == "4" and root.get("failures") == "1"
    failed = [tc.get("name") for tc in root.iter("testcase") if tc.find("failure") is not None]
    assert failed == ["broken-one"]


def test_markdown_is_a_github_table_with_details():
    vs = verdicts()
    _, summary = go_no_go(vs)
    md = render("markdown", vs, summary, META)
    assert md.startswith("# Stage 2 against stage 0")
    assert "| scenario" in md and "|---" in md.replace(":", "").replace(" ", "")
    assert "**broken-one** (REGRESSED)" in md


def test_go_when_nothing_regressed():
    go, summary = go_no_go([judge("a", [obs(), obs()], [obs()])])
    assert go and summary.startswith("GO")
