"""The claims table of the committed data, kept as a golden file: the same scenario's data must give
the same table after a refactor (tests/unit/test_claims_unchanged.py). The table is computed as
notebook 20 computes it, from the runs the golden names, so runs measured later do not move it.

After a change meant to move the claims (a new statistic, new wording), write it again and review
the diff:  .venv/bin/python tests/support/claims_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from gaplab.analysis import metrics
from gaplab.report import claims, fairness, speed
from gaplab.spec.config import RAW_DIR
from gaplab.storage.backend import location

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
TABLE, RUNS = GOLDEN / "claims.csv", GOLDEN / "claims.runs.json"


def claims_of(raw, machine_id: str, run_ids: list[str] | None = None) -> pl.DataFrame:
    """Notebook 20's gated claims table for one machine's runs (all of them, or run_ids)."""
    requests = speed.scan_requests(raw, machine_id)
    if run_ids is not None:
        requests = requests.filter(pl.col("run_id").is_in(run_ids))
    trials = metrics.trial_summary(requests)
    table = claims.claims_table(trials, margin=speed.equivalence_margin(raw, machine_id))
    return fairness.gate(table, fairness.facts(raw, machine_id, requests)).sort("claim_id")


def write() -> None:
    raw = location(RAW_DIR)
    machine_id = speed.pick_machine(raw, "")
    run_ids = sorted(metrics.trial_summary(speed.scan_requests(raw, machine_id))["run_id"].to_list())
    GOLDEN.mkdir(exist_ok=True)
    claims_of(raw, machine_id, run_ids).write_csv(TABLE)
    RUNS.write_text(json.dumps({"machine_id": machine_id, "run_ids": run_ids}, indent=0) + "\n")
    print(f"wrote {TABLE} and {RUNS}: {len(run_ids)} runs of {machine_id}")


if __name__ == "__main__":
    write()
