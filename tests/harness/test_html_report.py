"""`harness run --scenarios DIR` with one broken YAML beside a good one, and its report.html checked
in headless Chromium (Debian `chromium`): verdict table, ladder from the captures with the NAT
translation and the BYE, audio per direction with packet counts, pcap links that resolve."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

import pytest

from tests.stack import ROOT

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="NAT labs need root (CI runs as root)")]
HARNESS = [sys.executable, "-m", "harness"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_dom(path: str) -> str:
    binary = shutil.which("chromium")
    assert binary, "chromium missing (scripts/setup.sh installs Debian's chromium)"
    profile = tempfile.mkdtemp(prefix="ims-chromium-")
    try:
        out = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                              "file://" + os.path.abspath(path)], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert out.returncode == 0 and "<html" in out.stdout, out.stderr[-2000:]
    return out.stdout


class Texts(HTMLParser):
    """Visible text per element class, links, svg text."""

    def __init__(self):
        super().__init__()
        self.stack, self.by_class, self.links, self.svg_text, self.cells = [], {}, [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.stack.append((tag, a.get("class", "")))
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if not self.stack or not data.strip():
            return
        tag, cls = self.stack[-1]
        self.by_class.setdefault(cls, []).append(data.strip())
        if tag == "text":
            self.svg_text.append(data.strip())
        if tag in ("td", "b"):
            self.cells.append(data.strip())


def test_run_with_broken_yaml_and_html_report_in_chromium(tmp_path):
    scen = tmp_path / "scenarios"
    scen.mkdir()
    shutil.copy(os.path.join(ROOT, "scenarios", "both-cone.yaml"), scen)
    (scen / "broken.yaml").write_text("name: broken\nsteps: [\n")
    out_dir = tmp_path / "out"
    out = subprocess.run(HARNESS + ["run", "--stage", "2", "--scenarios", str(scen), "--output", str(out_dir)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 1, out.stdout + out.stderr           # the broken file counts as an error
    assert re.search(r"both-cone\s+two-way\s+ok", out.stdout), out.stdout
    assert "broken" in out.stdout and "ERROR" in out.stdout and "skipped" in out.stderr

    dom = chromium_dom(str(out_dir / "report.html"))
    page = Texts()
    page.feed(dom)
    verdicts = page.by_class.get("verdict", [])
    assert "ok" in verdicts and any(v.startswith("ERROR: broken.yaml") for v in verdicts)
    columns = page.by_class.get("column", [])
    assert columns == ["alice", "nat_a", "server", "nat_b", "bob"]
    msgs = page.by_class.get("msg", [])
    for label in ("REGISTER", "INVITE", "180 Ringing (INVITE)", "200 OK (INVITE)", "ACK", "BYE", "200 OK (BYE)"):
        assert label in msgs, (label, msgs)
    assert msgs.count("BYE") == 2 and msgs.count("200 OK (BYE)") == 2     # both NAT legs of the hang-up
    # the NAT translation of alice's requests: her private Via address against nat_a's public one
    nat_notes = page.by_class.get("nat", [])
    assert any(re.search(r"NAT 10\.\d+\.\d+\.\d+:5060 \u2192 (203\.0\.113|198\.51\.100)\.\d+:\d+", n) for n in nat_notes), nat_notes
    assert page.by_class.get("audio") == ["two-way"]
    cells = page.cells
    for name in ("alice \u2192 bob", "bob \u2192 alice"):
        i = cells.index(name)
        sent, received = int(cells[i + 1]), int(cells[i + 2])
        assert sent > 20 and received > 0.8 * sent, cells[i:i + 4]
    pcaps = [link for link in page.links if link.endswith(".pcap")]
    assert {os.path.basename(p) for p in pcaps} == {"nat_a-public.pcap", "nat_b-public.pcap", "server-public.pcap"}
    for link in pcaps:
        assert (out_dir / link).stat().st_size > 24


def test_scenarios_list_and_show_take_a_path_and_report_broken_files(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: x\n")                  # no steps
    shutil.copy(os.path.join(ROOT, "scenarios", "busy.yaml"), tmp_path)
    out = subprocess.run(HARNESS + ["scenarios", "list", "--scenarios", str(tmp_path)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1 and re.search(r"^busy\s", out.stdout, re.M) and "broken" in out.stdout
    assert "missing field 'steps'" in out.stdout + out.stderr
    out = subprocess.run(HARNESS + ["scenarios", "show", "busy", "--scenarios", str(tmp_path / "busy.yaml")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and "name: busy" in out.stdout
