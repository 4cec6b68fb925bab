"""What pairing trials by sweep round gains: the claims table's ratio intervals paired against
unpaired on the same data.

    .venv/bin/python bench/paired_gain.py [DATA_DIR] [--machine ID]     (default: data/raw, every machine)

For each machine's matrix trials (as notebooks/20 reads them), the claims table is made twice,
both with the runs' equivalence margin: as the report makes it (paired where both sides share
2 or more sweep rounds, stats.py) and with every interval unpaired (Welch on the logs, pooled
spreads). Over the comparisons it makes (faster and scales rows with an interval both ways),
prints the median and p90 ratio half-width each way, over all of them and over those the
report pairs, and the share decided each way: a direction, or the same within the margin.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gaplab.analysis import metrics  # noqa: E402
from gaplab.report import claims, speed  # noqa: E402
from gaplab.storage import store

RAW = Path(__file__).resolve().parents[1] / "data" / "raw"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summary(name: str, rows: pl.DataFrame) -> str:
    half = rows["half"].to_list()
    n = rows.height
    decided = claims.decided(rows).height
    return (f"  {name:9s} half-width median {pct(half, 0.5) * 100:5.1f}%  p90 {pct(half, 0.9) * 100:5.1f}%   "
            f"decided {decided}/{n} = {decided / n:.0%}")


def compare(trials: pl.DataFrame, margin: float) -> None:
    made = {}
    for way, paired in (("paired", True), ("unpaired", False)):
        made[way] = (claims.claims_table(trials, margin=margin, paired=paired)
                     .filter(pl.col("kind").is_in(["faster", "scales"]) & pl.col("ratio_lo").is_not_null())
                     .with_columns(half=(pl.col("ratio_hi") - pl.col("ratio_lo")) / 2 / pl.col("ratio")))
    key = ["claim_id", "kind", "users_b"]  # a claim id with its kind and lower level names one comparison
    keep = made["paired"].select(key).join(made["unpaired"].select(key), on=key)
    rows = {w: f.join(keep, on=key) for w, f in made.items()}
    pairable = rows["paired"].filter(pl.col("interval_method") == "paired").select(key)
    print(f" {rows['paired'].height} comparisons with an interval; {pairable.height} of them paired by round")
    if rows["paired"].is_empty():
        return
    print(" all comparisons:")
    for way in ("paired", "unpaired"):
        print(summary("as report" if way == "paired" else "unpaired", rows[way]))
    if pairable.height:
        print(" the comparisons the report pairs:")
        for way in ("paired", "unpaired"):
            print(summary(way, rows[way].join(pairable, on=key)))
    for way in ("paired", "unpaired"):
        counts = rows[way].group_by("verdict").len().sort("verdict")
        print(f"  verdicts {way}: " + ", ".join(f"{v} {n}" for v, n in counts.iter_rows()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="?", type=Path, default=RAW)
    ap.add_argument("--machine", default=None)
    args = ap.parse_args()
    machines = ([args.machine] if args.machine else
                sorted(metrics.with_run_keys(store.read_table(args.data, "run"))["machine_id"].unique().to_list()))
    for machine in machines:
        req = speed.measured_requests(args.data, machine)
        if req.is_empty():
            continue
        trials = metrics.trial_summary(req)
        print(f"machine {machine}: {trials.height} trials in {trials['cell_key'].n_unique()} cells")
        compare(trials, speed.equivalence_margin(args.data, machine))


if __name__ == "__main__":
    main()
