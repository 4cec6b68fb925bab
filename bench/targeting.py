"""What sending trials where a verdict is open buys, at one time budget, on simulated trials
whose truth is known.

    .venv/bin/python bench/targeting.py [--runs 30] [--budget 600] [--noise 0.05]

A matrix like the default's (three servers, two weight files each, 1, 4 and 8 users: 18 cells)
is measured by the sweep's own code (sweep.pending, align_trials, CellTrials) with simulated
trials instead of real ones: each cell's true aggregate tok/s (a batching server ahead only
with more users, a second engine near the first at one user), a drift shared by every trial of
a round (sd 8%) and each trial's own noise (sd `--noise`, 5%), TTFT moving against it with its own noise;
5 s a trial, at least 2 trials and at most 5 a cell, and `--budget` seconds for the rest. Two
rules spend the same budget:
- precision only (the sweep before gaplab.analysis.stopping): every cell wider than ±5% gets a trial
  each round;
- targeted (gaplab.analysis.stopping): the comparisons on the same weights still open at 99.9%, the
  cheapest to decide first.
Printed, averaged over --runs seeds: the share of comparisons decided at 95% (all, and on the
same weights), trials spent, and false findings among the decided: a direction the truth
contradicts, or "the same within 5%" where the truth differs by more.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gaplab.analysis import stats, stopping  # noqa: E402
from gaplab.report.claims import claims_table  # noqa: E402
from gaplab.spec.load import LoadSpec  # noqa: E402
from gaplab.spec.scenario import parse_scenario  # noqa: E402
from gaplab.sweep.rounds import CellTrials, align_trials, pending, pools  # noqa: E402

DRIFT, NOISE, TRIAL_S = 0.08, 0.05, 5.0
LEVELS = [1, 4, 8]
SCENARIO = {"name": "sim", "models": [{"name": "m", "quants": ["Q4", "Q8"]}],
            "runtimes": [{"name": "batch", "kind": "llamacpp", "parallel": 8},
                         {"name": "single", "kind": "llamacpp", "parallel": 1},
                         {"name": "engine", "kind": "vllm", "quants": ["Q4", "Q8"]}],
            "workloads": [{"name": "w", "prompt_tokens": 8, "output_tokens": 8}], "load": {"concurrency": LEVELS}}
# true aggregate tok/s: one user decodes alike on the two llama.cpp servers; batching pays with users
SPEED = {("batch", 1): 20.0, ("batch", 4): 52.0, ("batch", 8): 70.0,
         ("single", 1): 20.0, ("single", 4): 21.0, ("single", 8): 20.6,
         ("engine", 1): 19.0, ("engine", 4): 50.0, ("engine", 8): 80.0}
QUANT = {"Q4": 1.0, "Q8": 0.8}


def truth(cell) -> float:
    return SPEED[(cell.runtime.name, cell.concurrency)] * QUANT[cell.quant]


def precision_only(cells: dict, load: LoadSpec, budget_s: float | None) -> list:
    p = pools(cells)
    return [ct for ct in cells.values() if len(ct.values) < load.trials or (
        ct.room(load) and not stopping.precise(ct.values, load.precision, p[ct.cell.runtime.name]))
        and (budget_s is None or budget_s > 0)]


def simulate(rule, load: LoadSpec, budget_s: float, seed: int, noise: float = NOISE) -> dict:
    rng = random.Random(seed)
    cells = {c.cell_key: CellTrials(c, "20261207T000000Z-000000") for c in parse_scenario(SCENARIO).cells()}
    spent = 0.0
    while True:
        todo = [ct for ct in rule(cells, load, budget_s - spent)
                if len(ct.values) < load.trials or spent < budget_s]
        if not todo:
            break
        align_trials(cells.values(), todo)
        drift = rng.gauss(0, DRIFT)
        for ct in todo:
            if spent >= budget_s and len(ct.values) >= load.trials:
                continue  # as the sweep does: past its budget only a cell's minimum trials start
            v = truth(ct.cell) * math.exp(drift + rng.gauss(0, noise))
            ct.add({"model": "m", "workload": "w", "runtime": ct.cell.runtime.name, "runtime_kind": ct.cell.runtime.kind,
                    "quant": ct.cell.quant, "concurrency": ct.cell.concurrency, "rate": None, "cell_key": ct.cell.cell_key,
                    "series_id": ct.series_id, "trial": ct.next_trial, "aggregate_tok_s": v,
                    "ttft_p50_ms": 1000 / v * math.exp(rng.gauss(0, noise)), "span_s": TRIAL_S})
            ct.wall_s.append(TRIAL_S)
            ct.next_trial += 1
            spent += TRIAL_S
    rows = [r for ct in cells.values() for r in ct.rows]
    shares = stopping.decided_share(rows, load.equivalence_margin)
    table = claims_table(pl.DataFrame(rows), margin=load.equivalence_margin)
    return {"all": shares["all"], "same": shares["same weights"], "trials": len(rows),
            "false": false_findings(table, cells, load.equivalence_margin)}


def false_findings(table: pl.DataFrame, cells: dict, margin: float) -> tuple[int, int]:
    """(decided faster/scales rows, those the truth contradicts)."""
    speed = {(c.cell.runtime.name, c.cell.quant, c.cell.concurrency): truth(c.cell) for c in cells.values()}
    decided = wrong = 0
    for r in table.filter(pl.col("kind").is_in(["faster", "scales"])).iter_rows(named=True):
        if r["verdict"] not in stats.DIRECTIONS and not stats.is_same(r["verdict"]):
            continue
        (ra, qa), (rb, qb) = (x.split(" · ") for x in (r["a"], r["b"]))
        true = speed[(ra, qa, r["users"])] / speed[(rb, qb, r["users_b"])]
        if r["metric"] == "ttft_p50_ms":
            true = 1 / true
        decided += 1
        if stats.is_same(r["verdict"]):
            wrong += abs(math.log(true)) > math.log(1 + margin)
        else:
            a_better = (true > 1) == (r["metric"] != "ttft_p50_ms")
            wrong += (r["verdict"] == "A better") != a_better or true == 1
    return decided, wrong


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of trials, the minimum ones included")
    ap.add_argument("--noise", type=float, default=NOISE, help="sd of a trial's own noise (log scale)")
    args = ap.parse_args()
    load = LoadSpec(concurrency=LEVELS, trials=2, max_trials=5, precision=0.05, max_cell_seconds=1e9)
    print(f"{len(parse_scenario(SCENARIO).cells())} cells, {args.budget:.0f} s of {TRIAL_S:.0f}-s trials, "
          f"trial noise {args.noise:.0%}, {args.runs} runs each")
    for name, rule in (("precision only", precision_only), ("targeted", pending)):
        runs = [simulate(rule, load, args.budget, seed, args.noise) for seed in range(args.runs)]
        share = {k: statistics.fmean(r[k][1] / r[k][0] for r in runs) for k in ("all", "same")}
        decided, wrong = (sum(r["false"][i] for r in runs) for i in (0, 1))
        print(f"  {name:15s} decided: all {share['all']:.0%}, same weights {share['same']:.0%}; "
              f"trials {statistics.fmean(r['trials'] for r in runs):.0f}; false findings {wrong} of {decided} "
              f"decided ({wrong / max(decided, 1):.1%})")


if __name__ == "__main__":
    main()
