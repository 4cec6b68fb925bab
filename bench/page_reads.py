"""How often the throughput page's frames read the store, and how long that takes.

    .venv/bin/python bench/page_reads.py [DATA_DIR]      (default: data/raw)

Runs the analysis calls notebooks/20-throughput-latency makes (machine, requests, trials,
estimates, setup story, cold starts, placement) three ways, in the same process, median of
3 each: as gaplab does (store.read_table: one lazy polars scan per table, kept while its
files are unchanged), then as it did before (one read_parquet per file, concatenated),
once keeping that frame and once re-reading every time (the first version). Prints the
Parquet files opened and the seconds each way takes.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gaplab.analysis import metrics  # noqa: E402
from gaplab.report import cold_start, speed, speed_prose  # noqa: E402
from gaplab.storage import store

RAW = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "data" / "raw"
OPENED = [0]
_scan_table = store.scan_table


# store.read_table passes scan_table the files it already listed (a third argument); both stand-ins take it


def counting_scan(raw_dir, name, files=None):
    OPENED[0] += len(files) if files is not None else sum(1 for _ in Path(raw_dir).glob(f"**/*.{name}.parquet"))
    return _scan_table(raw_dir, name) if files is None else _scan_table(raw_dir, name, files)


def file_by_file(raw_dir, name, files=None):
    """The reader before the lazy scan: every file parsed on its own, then concatenated."""
    files = sorted(Path(raw_dir).glob(f"**/*.{name}.parquet")) if files is None else files
    OPENED[0] += len(files)
    schema = pl.from_arrow(store.TABLES[name].empty_table()).schema
    if not files:
        return pl.LazyFrame(schema=schema)
    frame = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    return frame.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in schema.items()
                              if c not in frame.columns).lazy()


def page() -> None:
    machine = speed.pick_machine(RAW, "")
    trials = metrics.trial_summary(speed.measured_requests(RAW, machine))
    estimates = speed.estimates(trials, speed.precision_target(RAW, machine))
    speed_prose.setup_story(speed.runs(RAW), machine, estimates)
    cold_start.cold_starts(RAW, machine)
    speed_prose.placement_story(speed.runs(RAW), machine)


def measure(scan, keep: bool) -> tuple[int, float]:
    store.scan_table = scan
    seconds, opened = [], 0
    for _ in range(3):
        store._READ.clear()
        OPENED[0] = 0
        t0 = time.perf_counter()
        if keep:
            page()
        else:  # the first version: the memory emptied before every read
            read = store.read_table
            store.read_table = lambda raw_dir, name: (store._READ.clear(), read(raw_dir, name))[1]
            try:
                page()
            finally:
                store.read_table = read
        seconds.append(time.perf_counter() - t0)
        opened = OPENED[0]
    store.scan_table = _scan_table
    return opened, statistics.median(seconds)


page()  # imports and the OS file cache, before anything is timed
files = sum(1 for _ in RAW.glob("**/*.parquet"))
now, t_now = measure(counting_scan, True)
kept, t_kept = measure(file_by_file, True)
again, t_again = measure(file_by_file, False)
print(f"{RAW}: {files} Parquet files")
print(f"file by file, re-read each time: {again} files opened, {t_again:.2f} s (median of 3)")
print(f"file by file, read once:         {kept} files opened, {t_kept:.2f} s")
print(f"lazy scan, read once (gaplab):   {now} files opened, {t_now:.2f} s  "
      f"-> x{t_kept / t_now:.1f} faster than file by file, x{t_again / t_now:.1f} than the first version")
