"""A gap apportioned on constructed trials whose factors' effects are known, and ablations in a
scenario checked when it loads."""

import copy
import math

import polars as pl
import pytest

from gaplab.report import ablation
from gaplab.spec.scenario import parse_scenario

SPREAD = (0.98, 1.0, 1.02, 0.99, 1.01)
CHAIN = {"a": "base · Q4", "b": "both · Q4", "factor:slots": "slots · Q4", "factor:engine": "engine · Q4"}
SPEC = {"name": "g", "model": "m", "workload": "w", "users": 8, "metric": "aggregate_tok_s", "chain": CHAIN}


def trials(values: dict[str, float]) -> pl.DataFrame:
    """Five trials per configuration ('runtime · quant' -> its value), a 2% spread."""
    return pl.DataFrame([{"machine_id": "m1", "runtime": c.split(" · ")[0], "quant": "Q4", "config": c, "model": "m",
                          "workload": "w", "concurrency": 8, "cell_key": c, "aggregate_tok_s": v * f}
                         for c, v in values.items() for f in SPREAD])


def step(steps: pl.DataFrame, name: str) -> dict:
    return steps.filter(pl.col("step") == name).row(0, named=True)


def test_separate_effects_multiply_to_the_gap_and_leave_no_remainder():
    steps, why = ablation.apportion(trials({"base · Q4": 100, "slots · Q4": 200, "engine · Q4": 150,
                                            "both · Q4": 300}), SPEC)
    assert why == ""
    assert step(steps, "slots")["ratio"] == pytest.approx(2, rel=1e-3)
    assert step(steps, "the whole gap")["ratio"] == pytest.approx(3, rel=1e-3)
    rest = step(steps, "remainder")
    assert rest["ratio"] == pytest.approx(1, rel=1e-3) and rest["ratio_lo"] < 1 < rest["ratio_hi"]
    # shares of the log gap: log 2 / log 3 and log 1.5 / log 3, each inside its interval
    for name, want in (("slots", math.log(2) / math.log(3)), ("engine", math.log(1.5) / math.log(3))):
        s = step(steps, name)
        assert s["share_pct"] == pytest.approx(100 * want, abs=0.5) and s["share_lo"] < s["share_pct"] < s["share_hi"]


def test_an_interaction_shows_as_a_remainder_with_its_own_interval():
    # each factor alone changes nothing; together they double the metric
    steps, _ = ablation.apportion(trials({"base · Q4": 100, "slots · Q4": 100, "engine · Q4": 100,
                                          "both · Q4": 200}), SPEC)
    rest = step(steps, "remainder")
    assert rest["ratio"] == pytest.approx(2, rel=1e-3) and rest["ratio_lo"] > 1.5
    rows = ablation.claim_rows(SPEC, steps)
    assert rows["kind"].unique().to_list() == ["ablation"]
    assert rows.filter(pl.col("claim_id").str.ends_with("|remainder"))["verdict"][0] == "A better"
    assert "no change the interval resolves" in rows.filter(pl.col("claim_id").str.ends_with("|slots"))["text"][0]
    frame = ablation.waterfall_frame(SPEC, steps)
    assert frame["step"].to_list() == ["slots", "engine", "remainder", "the whole gap"]
    assert frame.filter(pl.col("step") == "remainder")["end"][0] == pytest.approx(2, rel=1e-3)


def test_a_configuration_without_two_trials_is_named_not_apportioned():
    t = trials({"base · Q4": 100, "slots · Q4": 200, "engine · Q4": 150}).vstack(
        trials({"both · Q4": 300}).head(1))
    steps, why = ablation.apportion(t, SPEC)
    assert steps.is_empty() and why == "both · Q4 measured in fewer than two trials at 8 users"
    assert "Not apportioned: both · Q4" in ablation.story({**SPEC, "chain": CHAIN}, ablation.claim_rows(SPEC, steps), why)


SCENARIO = {
    "name": "t",
    "runtimes": [{"name": "one", "kind": "llamacpp"}, {"name": "eight", "kind": "llamacpp", "parallel": 8},
                 {"name": "v", "kind": "vllm", "quants": ["BF16"]}],
    "models": [{"name": "m", "quants": ["F16", "Q4_1"]}],
    "workloads": [{"name": "w", "prompt_tokens": 32, "output_tokens": 16}],
    "load": {"concurrency": [1, 8]},
    "ablations": [{"name": "g", "a": "one", "b": "v", "factors": {"slots": "eight"}, "model": "m", "quant": "Q4_1",
                   "users": 8}],
}


def test_a_scenarios_ablation_is_stored_resolved_with_every_cell():
    cells = parse_scenario(SCENARIO).cells()
    stored = cells[0].ablations[0]
    # vLLM serves the model in one dtype of its own: the chain takes it at that one
    assert stored["chain"] == {"a": "one · Q4_1", "b": "v · BF16", "factor:slots": "eight · Q4_1"}
    assert stored["workload"] == "w" and all(c.ablations == cells[0].ablations for c in cells)
    without = copy.deepcopy(SCENARIO)
    del without["ablations"]
    assert [c.cell_key for c in parse_scenario(without).cells()] == [c.cell_key for c in cells]


@pytest.mark.parametrize("change, expected", [
    ({"b": "nine"}, "ablations.0.b: 'nine' is not one of the scenario's runtimes"),
    ({"factors": {"slots": "nine"}}, "ablations.0.factors.slots: 'nine' is not one of the scenario's runtimes"),
    ({"users": 4}, "ablations.0.users: 4 is not a level the workload is measured at"),
    ({"quant": "Q8_0"}, "ablations.0.quant: runtime"),
    ({"metric": "tok_s"}, "ablations.0.metric"),
])
def test_a_bad_ablation_names_its_field(change, expected):
    from gaplab.spec.scenario import ScenarioError

    bad = copy.deepcopy(SCENARIO)
    bad["ablations"][0].update(change)
    with pytest.raises((ScenarioError, ValueError), match=expected.replace(".", r"\.")):
        parse_scenario(bad)


def test_each_run_stores_its_scenarios_ablations_and_the_page_reads_them_back(tmp_path):
    from gaplab.measure.trial import run_meta
    from gaplab.storage import store

    cell = parse_scenario(SCENARIO).cells()[0]
    meta = run_meta(cell, None, "2026-01-01T00:00:00+00:00", "complete", None)
    ident = {"run_id": "20260101T000000Z-abc123", "cell_id": cell.cell_id, "cell_key": cell.cell_key,
             "scenario": "t", "hardware_id": "hw", "machine_id": "m-1", "series_id": "20260101T000000Z-abc123",
             "trial": 1, "runtime": "one", "runtime_kind": "llamacpp", "runtime_version": "v", "model": "m",
             "quant": "F16", "workload": "w", "concurrency": 1, "threads": 1, "parallel": 1}
    store.write_run(tmp_path, ident, meta, [])
    got = ablation.specs(tmp_path, "m-1")
    assert [g["name"] for g in got] == ["g"] and got[0]["chain"]["b"] == "v · BF16"
    assert ablation.specs(tmp_path, "m-2") == []
