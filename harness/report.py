"""Comparison reports: tabulate table, JSON, JUnit XML, Markdown."""
from __future__ import annotations

import json
import platform
from xml.sax.saxutils import escape, quoteattr

from tabulate import tabulate

HEADERS = ["scenario", "baseline", "candidate", "audio", "NAT fixups", "CDR", "verdict"]


def rows(verdicts) -> list[list[str]]:
    return [[v.scenario, v.baseline, v.candidate, v.audio, v.nat, v.cdr, v.verdict] for v in verdicts]


def table(verdicts, summary: str, fmt: str = "simple") -> str:
    return tabulate(rows(verdicts), headers=HEADERS, tablefmt=fmt) + "\n\n" + summary


def as_json(verdicts, summary: str, meta: dict) -> str:
    return json.dumps({"meta": meta, "go": summary.startswith("GO"), "summary": summary,
                       "scenarios": [v.as_dict() for v in verdicts]}, indent=2, default=str)


def junit(verdicts, summary: str, meta: dict) -> str:
    failures = sum(1 for v in verdicts if v.verdict == "REGRESSED")
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name={quoteattr("harness compare stage %s vs %s" % (meta.get("candidate"), meta.get("baseline")))} '
           f'tests="{len(verdicts)}" failures="{failures}" time="{meta.get("seconds", 0):.1f}">']
    for v in verdicts:
        out.append(f'  <testcase classname="scenarios" name={quoteattr(v.scenario)}>')
        if v.verdict == "REGRESSED":
            out.append(f'    <failure message={quoteattr("; ".join(v.reasons)[:500])}/>')
        out.append(f"    <system-out>{escape(json.dumps(v.as_dict(), default=str))}</system-out>")
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


def markdown(verdicts, summary: str, meta: dict) -> str:
    head = (f"# Stage {meta.get('candidate')} against stage {meta.get('baseline')}\n\n"
            f"{summary}\n\nBackend `{meta.get('backend')}`, {meta.get('seconds', 0):.0f} s on "
            f"{platform.processor() or platform.machine()}.\n\n")
    body = tabulate(rows(verdicts), headers=HEADERS, tablefmt="github")
    details = []
    for v in verdicts:
        if v.reasons or v.noise:
            details.append(f"- **{v.scenario}** ({v.verdict}): {'; '.join(v.reasons) or 'no counted change'}"
                           + (f" — noise: {', '.join(v.noise[:6])}" if v.noise else ""))
    return head + body + "\n\n" + "\n".join(details) + "\n"


def render(fmt: str, verdicts, summary: str, meta: dict) -> str:
    if fmt == "json":
        return as_json(verdicts, summary, meta)
    if fmt == "junit":
        return junit(verdicts, summary, meta)
    if fmt == "markdown":
        return markdown(verdicts, summary, meta)
    return table(verdicts, summary)
