"""report.html: the evidence of `harness compare` / `harness run` as one static page.

Written into the output directory next to the runs' evidence, so its links to pcaps, logs and
transcripts are relative and the directory can be zipped, attached or opened from disk (no
server, no script, no external asset). Per scenario: the verdict (compare) or expectation check
(run), the NAT-fixup and CDR differences, and per run a SIP ladder diagram drawn from the run's
captures (harness.ladder), audio per direction with packet counts and links to the files.
"""
from __future__ import annotations

import html
import os

from harness.ladder import ladder_from_evidence, ladder_svg

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f2f2f2}.v-REGRESSED,.v-ERROR,.v-MISMATCH{background:#fbd5d5}.v-improved{background:#d5f5d9}
.v-same{background:#fff}.v-noisy{background:#fff3cd}.v-ok{background:#d5f5d9}
section.scenario{border-top:2px solid #444;margin-top:28px}details{margin:8px 0 16px 0}
summary{cursor:pointer;font-weight:bold}.ladder{border:1px solid #ddd;background:#fcfcfc;margin:6px 0}
.summary{font-size:18px;font-weight:bold}.files a{margin-right:12px}code{font-size:12px}
"""
AUDIO_FIELDS = (("a_to_b", "alice \u2192 bob"), ("b_to_a", "bob \u2192 alice"))
CDR_COLUMNS = ("record_type", "call_state", "caller_number", "callee_number", "caller_ip", "callee_ip",
               "status_code", "termination_reason")
e = html.escape


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _table(headers, rows, classes=None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{e(classes[i])}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _audio(obs: dict) -> str:
    audio = obs.get("audio") or {}
    rows = []
    for key, name in AUDIO_FIELDS:
        d = audio.get(key) or {}
        rows.append([e(name), str(d.get("sent", 0)), str(d.get("received", 0)), f"{d.get('loss', 0):.1%}",
                     e(str((audio.get("rtcp") or {}).get(key, "-")))])
    return (f"<p>audio: <b class=\"audio\">{e(str(audio.get('direction', '?')))}</b></p>"
            + _table(["direction", "RTP packets sent", "received", "loss", "RTCP"], rows))


def _files(evidence: str, output: str) -> str:
    if not os.path.isdir(evidence):
        return ""
    links = []
    for name in sorted(os.listdir(evidence)):
        if name.endswith((".pcap", ".log", ".txt", ".json")):
            rel = os.path.relpath(os.path.join(evidence, name), output)
            links.append(f'<a href="{e(rel)}">{e(name)}</a>')
    return '<p class="files">files: ' + " ".join(links) + "</p>"


def _run_block(res, output: str, title: str, open_: bool = False) -> str:
    ladder = ladder_from_evidence(res.evidence)
    parts = [f"<details{' open' if open_ else ''}><summary>{e(title)}"
             + (f" \u2014 error: {e(res.error[:200])}" if res.error else "") + "</summary>"]
    parts.append(_audio(res.observation))
    if ladder is None or not ladder.messages:
        parts.append("<p>no SIP in the captures</p>")
    else:
        parts.append(f"<p>SIP ladder ({len(ladder.messages)} messages, from the captures; dashed: the UA's "
                     "side of a NAT, labelled with the translation)</p>")
        parts.append(ladder_svg(ladder))
    parts.append(_files(res.evidence, output))
    parts.append("</details>")
    return "\n".join(parts)


def _changes_table(changes: dict, prefix: tuple[str, ...], empty: str) -> str:
    rows = [[f"<code>{e(k)}</code>", e(str(a)), e(str(b))] for k, (a, b) in sorted(changes.items())
            if k.startswith(prefix)]
    return _table(["field", "baseline", "candidate"], rows) if rows else f"<p>{e(empty)}</p>"


def _anchor(name: str) -> str:
    return "sc-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_compare_report(output: str, verdicts, summary: str, meta: dict, results) -> str:
    os.makedirs(output, exist_ok=True)
    title = f"Stage {meta.get('candidate')} against stage {meta.get('baseline')}"
    body = [f"<h1>{e(title)}</h1>", f'<p class="summary">{e(summary)}</p>',
            f"<p>backend {e(str(meta.get('backend')))}, {meta.get('runs')} runs in {meta.get('seconds')} s</p>"]
    rows, classes = [], []
    for v in verdicts:
        rows.append([f'<a href="#{_anchor(v.scenario)}">{e(v.scenario)}</a>', e(v.baseline), e(v.candidate),
                     e(v.audio), e(v.nat), e(v.cdr), f'<b class="verdict">{e(v.verdict)}</b>'])
        classes.append(f"v-{v.verdict}")
    body.append(_table(["scenario", "baseline", "candidate", "audio", "NAT fixups", "CDR", "verdict"], rows, classes))
    for v in verdicts:
        body.append(f'<section class="scenario" id="{_anchor(v.scenario)}"><h2>{e(v.scenario)}: {e(v.verdict)}</h2>')
        if v.reasons:
            body.append("<ul>" + "".join(f"<li>{e(r)}</li>" for r in v.reasons) + "</ul>")
        if v.noise:
            body.append(f"<p>noise (differs between baseline runs, not counted): {e(', '.join(v.noise[:12]))}</p>")
        body.append("<h3>NAT fix-ups: baseline vs candidate</h3>")
        body.append(_changes_table(v.changes, ("nat.",), "no NAT fix-up changed"))
        body.append("<h3>CDR: baseline vs candidate</h3>")
        body.append(_changes_table(v.changes, ("cdr",), "CDR rows identical (normalised)"))
        runs = sorted((r for r in results if r.scenario == v.scenario), key=lambda r: (r.stage != meta.get("baseline"), r.run))
        for r in runs:
            role = "baseline" if r.stage == meta.get("baseline") and r.run < 10 else "candidate"
            body.append(_run_block(r, output, f"{role}: stage {r.stage} run {r.run}", open_=role == "candidate"))
        body.append("</section>")
    path = os.path.join(output, "report.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(_page(title, body))
    return path


def write_run_report(output: str, stage: int, scenarios, results, rows, broken) -> str:
    os.makedirs(output, exist_ok=True)
    title = f"Stage {stage}: scenario run"
    failed = sum(1 for r in rows if not str(r[2]).startswith("ok"))
    body = [f"<h1>{e(title)}</h1>",
            f'<p class="summary">{len(rows) - failed} of {len(rows)} scenarios met their expectation</p>']
    table_rows, classes = [], []
    for name, summ, verdict in rows:
        table_rows.append([f'<a href="#{_anchor(name)}">{e(name)}</a>', e(summ), f'<b class="verdict">{e(verdict)}</b>'])
        classes.append("v-ok" if str(verdict).startswith("ok") else ("v-ERROR" if str(verdict).startswith("ERROR")
                                                                    else "v-MISMATCH"))
    body.append(_table(["scenario", f"stage {stage}", "expectation"], table_rows, classes))
    for sc, res in zip(scenarios, results):
        obs = res.observation
        body.append(f'<section class="scenario" id="{_anchor(sc.name)}"><h2>{e(sc.name)}</h2>')
        if sc.description:
            body.append(f"<p>{e(sc.description)}</p>")
        nat = obs.get("nat") or {}
        body.append("<h3>NAT fix-ups seen</h3>")
        body.append(_table(["what", "value"], [[e(k), e("; ".join(map(str, v)) if isinstance(v, list) else str(v))]
                                              for k, v in sorted(nat.items())]))
        cdr = obs.get("cdr") or []
        body.append(f"<h3>CDR ({len(cdr)} rows)</h3>")
        body.append(_table(CDR_COLUMNS, [[e(str(r.get(c, ""))) for c in CDR_COLUMNS] for r in cdr]))
        body.append(_run_block(res, output, f"stage {res.stage} run {res.run}", open_=True))
        body.append("</section>")
    for b in broken:
        body.append(f'<section class="scenario" id="{_anchor(b.name)}"><h2>{e(b.name)}: ERROR</h2>'
                    f"<p>{e(b.path)}: {e(b.error)}</p></section>")
    path = os.path.join(output, "report.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(_page(title, body))
    return path
