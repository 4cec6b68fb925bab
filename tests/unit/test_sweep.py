import pytest

from gaplab.spec.load import LoadSpec
from gaplab.spec.scenario import parse_scenario
from gaplab.sweep.rounds import CellTrials

SCENARIO = {"name": "t", "runtimes": [{"name": "a", "kind": "llamacpp"}],
            "models": [{"name": "m", "quants": ["Q4"]}],
            "workloads": [{"name": "w", "prompt_tokens": 8, "output_tokens": 8}], "load": {"concurrency": [1]}}


def state(values, measured_s=10.0, pooled=None, **load) -> str:
    cell = parse_scenario(SCENARIO).cells()[0]
    spec = LoadSpec(concurrency=[1], **{"trials": 3, "max_trials": 5, "precision": 0.05, **load})
    return CellTrials(cell, "s", list(values), measured_s).state(spec, pooled)


@pytest.mark.parametrize("values, load, expected", [
    ([100, 101], {}, "needs trials"),  # fewer than the minimum, however precise
    ([100, 101, 100], {}, "precise"),  # +-1.4%: within 5%
    ([100, 120, 90], {}, "needs trials"),  # +-38%: another trial
    ([100, 120, 90, 110, 95], {}, "capped"),  # at max_trials, still wide
    ([100, 120, 90], {"max_cell_seconds": 5.0}, "capped"),  # out of time
    ([100, 120, 90], {"precision": 0}, "done"),  # precision 0: exactly `trials`
])
def test_a_cell_needs_trials_until_precise_or_capped(values, load, expected):
    assert state(values, **load) == expected


def test_a_cell_the_sweep_budget_stopped_is_capped():
    cell = parse_scenario(SCENARIO).cells()[0]
    spec = LoadSpec(concurrency=[1], trials=3, max_trials=5, precision=0.05, max_sweep_seconds=60)
    assert CellTrials(cell, "s", [100, 120, 90], 10.0).state(spec) == "needs trials"
    assert CellTrials(cell, "s", [100, 120, 90], 10.0, stopped=True).state(spec) == "capped"


def test_a_pooled_spread_lets_a_calm_cell_settle_and_holds_a_noisy_one():
    from gaplab.analysis.stats import Pool

    assert state([100, 103, 97], pooled=None) == "needs trials"  # +-7.5% from 3 trials alone
    assert state([100, 103, 97], pooled=Pool(0.02, 60)) == "precise"
    assert state([100, 103, 97], pooled=Pool(0.08, 60)) == "needs trials"
