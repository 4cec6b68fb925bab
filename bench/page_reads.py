"""How often the throughput page's frames read the store, and how long that takes.

    .venv/bin/python bench/page_reads.py [DATA_DIR]      (default: data/raw)

Runs the analysis calls notebooks/20-throughput-latency makes (machine, requests, trials,
estimates, setup story, cold starts, placement) twice: once as gaplab does (store.read_table
keeps the last frame of each table while its files are unchanged) and once with that
memory emptied before every read, as it was before. Prints the Parquet files parsed and
the seconds taken by each, median of 3, in the same process.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gaplab import analysis, store  # noqa: E402

RAW = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "data" / "raw"
PARSED = [0]
_read_parquet = pl.read_parquet
_read_table = store.read_table


def counting_read_parquet(*args, **kwargs):
    PARSED[0] += 1
    return _read_parquet(*args, **kwargs)


def forgetful_read_table(raw_dir, name):
    store._READ.clear()
    return _read_table(raw_dir, name)


def page() -> None:
    machine = analysis.pick_machine(RAW, "")
    trials = analysis.trial_summary(analysis.measured_requests(RAW, machine))
    estimates = analysis.estimates(trials, analysis.precision_target(RAW, machine))
    analysis.setup_story(RAW, machine, estimates)
    analysis.cold_starts(RAW, machine)
    analysis.placement_story(RAW, machine)


def measure(read_table) -> tuple[int, float]:
    store.read_table = read_table
    seconds, parsed = [], 0
    for _ in range(3):
        store._READ.clear()
        PARSED[0] = 0
        t0 = time.perf_counter()
        page()
        seconds.append(time.perf_counter() - t0)
        parsed = PARSED[0]
    store.read_table = _read_table
    return parsed, statistics.median(seconds)


pl.read_parquet = counting_read_parquet
page()  # imports and the OS file cache, before either is timed
files = sum(1 for _ in RAW.glob("**/*.parquet"))
once, t_once = measure(_read_table)
again, t_again = measure(forgetful_read_table)
print(f"{RAW}: {files} Parquet files")
print(f"re-reading each time: {again} files parsed, {t_again:.2f} s (median of 3)")
print(f"reading once:         {once} files parsed, {t_once:.2f} s (median of 3)  -> x{t_again / t_once:.1f} faster")
