"""NAT-lab regression runs: every scenario against every stage, checked against the per-stage
expectation written in the scenario (which came from running the real stacks)."""
import os

import pytest

from harness.compare import meets
from harness.runner import run_many
from harness.scenario import load_all

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0, reason="NAT labs need root (CI runs as root)")]
SCENARIOS = load_all()
_cache: dict[int, dict] = {}


def results_for(stage: int, tmp_root: str) -> dict:
    if stage not in _cache:
        res = run_many([(sc, stage, 0) for sc in SCENARIOS], backend="netns",
                       evidence_root=os.path.join(tmp_root, f"stage{stage}"), workers=6)
        _cache[stage] = {r.scenario: r for r in res}
    return _cache[stage]


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_every_scenario_meets_its_expectation(stage, tmp_path_factory):
    results = results_for(stage, str(tmp_path_factory.mktemp(f"regress{stage}")))
    failures = []
    for sc in SCENARIOS:
        r = results[sc.name]
        ok, misses = meets(r.observation, sc.expect.get(stage))
        if r.error or not ok:
            failures.append(f"{sc.name}: {r.error or '; '.join(misses)} (evidence {r.evidence})")
    assert not failures, "\n".join(failures)
