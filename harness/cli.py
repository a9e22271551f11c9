"""`harness`: compare server stages in NAT labs (the main job), run scenarios, manage labs."""
from __future__ import annotations

import json
import os
import sys
import time

import click

from harness.scenario import ScenarioError, discover
from harness.stacks import StackType, expectation, stack
from netlab.topology import PROFILES as NAT_PROFILES

STAGES = StackType()
SCENARIOS_OPTION = click.option(
    "--scenarios", "scenarios_path", default=None, type=click.Path(exists=True),
    help="scenario directory or single YAML file (default: the project's scenarios/)")


def _scenarios(pattern: str, path: str | None = None, *, with_broken: bool = False):
    """Scenarios matching ``pattern``; a file that does not load is reported on stderr and skipped
    (returned as broken when ``with_broken``, so the caller counts it as an error)."""
    try:
        found, broken = discover(path, pattern)
    except ScenarioError as exc:
        raise click.ClickException(str(exc)) from None
    for b in broken:
        click.echo(f"error: scenario {b.path} skipped: {b.error}", err=True)
    if not found and not broken:
        raise click.ClickException(f"no scenario matches {pattern!r} (see `harness scenarios list`)")
    return (found, broken) if with_broken else found


def _need_root() -> None:
    from netlab.lifecycle import NotRoot, require_root
    try:
        require_root()
    except NotRoot as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _progress(res) -> None:
    status = "error: " + res.error[:80] if res.error else res.observation.get("audio", {}).get("direction", "?")
    click.echo(f"  [{res.seconds:5.1f}s] {res.scenario:<28} stage {res.stage} run {res.run}: {status}", err=True)


def _machine() -> dict:
    from harness.bench import machine
    return machine()


@click.group()
def cli() -> None:
    """ims-migrate harness: prove each server stage in real NAT labs before cutover."""


@cli.command()
@click.option("--stage", "--stack", "stage", type=STAGES, required=True,
              help="candidate: a stage (2-sippy: stage 2 on the Sippy B2BUA), kamailio (the reference stack) "
                   "or a stack definition file (stacks/README.md)")
@click.option("--baseline", "--baseline-stack", "baseline", type=STAGES, default=0, show_default=True,
              help="baseline: a stage, 2-sippy, kamailio, or a stack definition file (e.g. your own legacy "
                   "server, MIGRATION.md)")
@click.option("--scenario", "pattern", default="*", show_default=True, help="scenario name glob")
@click.option("--backend", type=click.Choice(["netns", "docker"]), default="netns", show_default=True)
@click.option("--repeat", type=click.IntRange(1, 10), default=1, show_default=True, help="candidate runs per scenario")
@click.option("-n", "--workers", type=click.IntRange(1, 32), default=6, show_default=True, help="labs in parallel")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "junit", "markdown"]), default="table", show_default=True)
@click.option("--output", "output", default="harness-out", show_default=True, help="evidence and report directory")
@click.option("--candidate-entry", type=click.Path(exists=True, dir_okay=False), default=None,
              help="run the candidate from this entrypoint file instead of the stage's own (testing a variant)")
@SCENARIOS_OPTION
def compare(stage, baseline, pattern, backend, repeat, workers, fmt, output, candidate_entry, scenarios_path) -> None:
    """Run BASELINE twice (noise) and STAGE, compare per scenario, print a verdict table.

    Exit status 0 only when no scenario REGRESSED and every scenario file loaded (go); 1 otherwise
    (no-go). A broken scenario file is reported, skipped, and counted as ERROR. Besides the printed
    report, OUTPUT gets report.txt/.json/.xml/.md and report.html (ladder diagrams from the
    captures, audio per direction, NAT-fixup and CDR diffs, pcap links)."""
    _need_root()
    from harness.compare import error_verdict, go_no_go, judge
    from harness.html_report import write_compare_report
    from harness.report import render
    from harness.runner import run_many
    scenarios, broken = _scenarios(pattern, scenarios_path, with_broken=True)
    if baseline == stage and candidate_entry is None:
        click.echo("note: baseline and candidate are the same stage: an A/A run", err=True)
    reference = stack(stage).reference or stack(baseline).reference
    jobs = []
    for sc in scenarios:
        jobs += [(sc, baseline, 0), (sc, baseline, 1)] + [(sc, stage, 10 + i) for i in range(repeat)]
    click.echo(f"comparing stage {stage} against stage {baseline}: {len(scenarios)} scenarios, {len(jobs)} runs, "
               f"{workers} labs in parallel ({backend})", err=True)
    t0 = time.monotonic()
    entries = {stage: candidate_entry} if candidate_entry else None
    if entries and baseline == stage:
        raise click.UsageError("--candidate-entry needs a baseline stage different from --stage")
    results = run_many(jobs, backend=backend, evidence_root=output, workers=workers, entries=entries,
                       progress=_progress)
    seconds = time.monotonic() - t0
    verdicts = []
    for sc in scenarios:
        base = [r.observation for r in results if r.scenario == sc.name and r.stage == baseline and r.run < 10]
        cand = [r.observation for r in results if r.scenario == sc.name and r.stage == stage and r.run >= 10]
        v = judge(sc.name, base, cand, expectation(sc.expect, baseline),
                  expectation(sc.expect, stage), reference=reference)
        verdicts.append(v)
        with open(os.path.join(output, sc.name, "verdict.json"), "w") as fh:
            json.dump(v.as_dict(), fh, indent=2, default=str)
        cdr_changes = {k: val for k, val in v.changes.items() if k.startswith("cdr")}
        with open(os.path.join(output, sc.name, "cdr-diff.txt"), "w") as fh:
            for k, (a, b) in cdr_changes.items():
                fh.write(f"{k}: baseline={a!r} candidate={b!r}\n")
    verdicts += [error_verdict(b.name, b.error) for b in broken]
    go, summary = go_no_go(verdicts)
    meta = {"candidate": stage, "baseline": baseline, "backend": backend, "seconds": round(seconds, 1),
            "runs": len(jobs), "workers": workers, "machine": _machine()}
    os.makedirs(output, exist_ok=True)
    for f, name in (("table", "report.txt"), ("json", "report.json"), ("junit", "report.xml"), ("markdown", "report.md")):
        with open(os.path.join(output, name), "w") as fh:
            fh.write(render(f, verdicts, summary, meta))
    write_compare_report(output, verdicts, summary, meta, results)
    click.echo(render(fmt, verdicts, summary, meta))
    click.echo(f"{len(jobs)} runs in {seconds:.1f}s; evidence in {output}/", err=True)
    sys.exit(0 if go else 1)


@cli.command()
@click.option("--stage", "--stack", "stage", type=STAGES, required=True,
              help="a stage (or 2-sippy: stage 2 on the Sippy B2BUA), kamailio, or a stack definition file")
@click.option("--scenario", "pattern", default="*", show_default=True)
@click.option("--backend", type=click.Choice(["netns", "docker"]), default="netns", show_default=True)
@click.option("-n", "--workers", type=click.IntRange(1, 32), default=6, show_default=True)
@click.option("--output", default="harness-out", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print observations as JSON")
@SCENARIOS_OPTION
def run(stage, pattern, backend, workers, output, as_json, scenarios_path) -> None:
    """Run scenarios against one stage and check each scenario's expectation for it.

    Writes OUTPUT/report.html (per scenario: ladder diagram from the captures, audio per
    direction, NAT fix-ups, CDR rows, pcap links). A broken scenario file is reported, skipped and
    counted as an error (exit status 1)."""
    _need_root()
    from harness.compare import meets, summary_of
    from harness.html_report import write_run_report
    from harness.runner import run_many
    from tabulate import tabulate
    scenarios, broken = _scenarios(pattern, scenarios_path, with_broken=True)
    results = run_many([(sc, stage, 0) for sc in scenarios], backend=backend, evidence_root=output,
                       workers=workers, progress=_progress)
    rows, failed, out = [], 0, {}
    for sc, res in zip(scenarios, results):
        ok, misses = meets(res.observation, expectation(sc.expect, stage))
        ok = ok and not res.error
        failed += not ok
        out[sc.name] = res.observation
        rows.append([sc.name, summary_of(res.observation), "ok" if ok else "MISMATCH: " + "; ".join(misses or [res.error or ""])])
    for b in broken:
        failed += 1
        rows.append([b.name, "not run", f"ERROR: {b.error}"])
    write_run_report(output, stage, scenarios, results, rows, broken)
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
    else:
        click.echo(tabulate(rows, headers=["scenario", f"stage {stage}", "expectation"]))
    sys.exit(1 if failed else 0)


@cli.command()
@click.option("--from", "from_stage", type=StackType(), required=True, help="stage running before the cutover")
@click.option("--to", "to_stage", type=StackType(), required=True,
              help="stage copied over run.py (2-sippy: stage 2 restarted with SIGNALLING=sippy)")
@click.option("--nat", type=click.Choice(NAT_PROFILES), default="cone", show_default=True,
              help="NAT profile of both UAs' routers")
@click.option("--backend", type=click.Choice(["netns", "docker"]), default="netns", show_default=True)
@click.option("--output", default="harness-out/drill", show_default=True, help="installation, logs, CDR, drill.json")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def drill(from_stage, to_stage, nat, backend, output, as_json) -> None:
    """Rehearse a cutover FROM -> TO and its rollback in a NAT lab, pm2-style restarts.

    Per phase: a call set up before the restart must keep RTP both ways, get its BYE relayed and
    its CDR row; a new call after the restart (no new REGISTER) must be answered. Prints the
    signalling outage and the calls lost; exit status 1 when a call was lost. A call set up on
    2-sippy is always lost at a restart (the reason says why)."""
    _need_root()
    from dataclasses import asdict
    from harness.drill import drillable, run_drill
    from tabulate import tabulate
    for option, name in (("--from", from_stage), ("--to", to_stage)):
        why = drillable(name)
        if why is not None:
            raise click.BadParameter(why, param_hint=option)
    phases = run_drill(from_stage, to_stage, backend=backend, output=output, nat=nat)
    if as_json:
        click.echo(json.dumps([{**asdict(p), "lost": p.lost} for p in phases], indent=2))
    else:
        rows = []
        for p in phases:
            for c in p.calls:
                rows.append([f"{p.name} {p.from_stack}->{p.to_stack}", f"{p.outage_seconds:.2f}", c.name,
                             "kept" if c.kept else "LOST: " + "; ".join(c.reasons)])
        click.echo(tabulate(rows, headers=["phase", "outage s", "call", "result"]))
        lost = sum(p.lost for p in phases)
        click.echo(f"\n{lost} call(s) lost; evidence in {output}/")
    sys.exit(1 if any(p.lost for p in phases) else 0)


@cli.group()
def scenarios() -> None:
    """List and show scenarios."""


@scenarios.command("list")
@SCENARIOS_OPTION
def scenarios_list(scenarios_path) -> None:
    """List scenarios; broken files are listed as ERROR (exit status 1)."""
    found, broken = _scenarios("*", scenarios_path, with_broken=True)
    for sc in found:
        click.echo(f"{sc.name:<30} {sc.caller_nat}/{sc.callee_nat:<10} {sc.description.splitlines()[0][:70] if sc.description else ''}")
    for b in broken:
        click.echo(f"{b.name:<30} ERROR      {b.error[:70]}")
    if broken:
        sys.exit(1)


@scenarios.command("show")
@click.argument("name")
@SCENARIOS_OPTION
def scenarios_show(name, scenarios_path) -> None:
    found = _scenarios(name, scenarios_path)
    if not found:
        raise click.ClickException(f"scenario {name!r} does not load (see the error above)")
    sc = found[0]
    with open(sc.path, encoding="utf-8") as fh:
        click.echo(fh.read())


def _attach_optional() -> None:
    from netlab.cli import lab_group
    cli.add_command(lab_group)
    try:
        from harness.bench import bench
        cli.add_command(bench)
    except ImportError:
        pass


_attach_optional()


def main() -> None:
    cli()
