"""How precise the workloads study's figures are: per figure, the spread of its cells' 95%
interval half-widths, relative to the estimate, as the workloads page computes them.

    .venv/bin/python bench/workload_precision.py [DATA_DIR] [--machine ID]   (default: data/raw)

Prints, per machine, for goodput (req/s within the SLO), keep-up (open-loop cells only) and
aggregate tok/s: the median, p90 and worst relative half-width over the cells that have an
interval, how many cells have none (one trial), the trials per cell, and the median measured
span of a trial. Issue 27 asks for a median of at most 15% on goodput and keep-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gaplab.report import speed, workloads  # noqa: E402

RAW = Path(__file__).resolve().parents[1] / "data" / "raw"
FIGURES = ("goodput_rps", "keep_up", "aggregate_tok_s")


def relative_half_widths(est: pl.DataFrame, metric: str) -> tuple[list[float], int]:
    """Half-widths over the estimate of the cells with an interval, and the count of those without."""
    cells = est.filter(pl.col(metric).is_not_null() & (pl.col(metric) > 0))
    with_interval = cells.filter(pl.col(f"{metric}_lo").is_not_null())
    halves = ((with_interval[f"{metric}_hi"] - with_interval[f"{metric}_lo"]) / 2 / with_interval[metric]).to_list()
    return sorted(halves), cells.height - with_interval.height


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", nargs="?", type=Path, default=RAW)
    ap.add_argument("--machine", default=None)
    args = ap.parse_args()
    req = speed.measured_requests(args.data_dir, args.machine, study="workloads")
    if req.is_empty():
        sys.exit(f"workload_precision: no workloads study under {args.data_dir}")
    trials = workloads.trials(req, workloads.run_settings(args.data_dir))
    for (machine,), rows in trials.group_by("machine_id"):
        est = workloads.estimates(rows)
        per_cell = rows.group_by("cell_key").len()["len"].to_list()
        print(f"{machine}: {est.height} cells, {rows.height} trials ({min(per_cell)}-{max(per_cell)} a cell), "
              f"median trial span {statistics.median(rows['span_s'].to_list()):.1f} s")
        for metric in FIGURES:
            halves, single = relative_half_widths(est, metric)
            if not halves:
                print(f"  {metric:16s} no cell with an interval")
                continue
            p90 = halves[min(len(halves) - 1, int(0.9 * len(halves)))]
            print(f"  {metric:16s} half-width median {statistics.median(halves) * 100:5.1f}%  p90 {p90 * 100:5.1f}%  "
                  f"worst {halves[-1] * 100:5.1f}%  over {len(halves)} cells" + (f" ({single} with one trial)" if single else ""))


if __name__ == "__main__":
    main()
