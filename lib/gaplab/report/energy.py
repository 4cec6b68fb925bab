"""Energy per output token: each trial's energy over its measured span, divided by its output
tokens, then one estimate per cell with its 95% interval, as every other figure (speed.estimates).
Two sources, each sampled by measure/telemetry on the request rows' clock: the CPU packages'
RAPL counters ("rapl") and the GPUs' total energy counters through NVML ("gpu").

A package counter holds the whole package's energy: idle power, the client and any other
process beside the trial are in it; a GPU's holds the whole card's (the page says so). Where the
counters could not be read, the page says "not measured" and the reason the run stored:
nothing is estimated instead.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from gaplab.analysis.metrics import Frame, selected_runs
from gaplab.report import markup, speed
from gaplab.report.charts import with_intervals
from gaplab.storage import store

METRICS = ["joules_per_token", "watts"]
SOURCES = {"rapl": "the CPU packages' energy (RAPL)", "gpu": "the GPUs' energy (NVML's total energy counter)"}


def trial_energy(raw_dir, requests: Frame, source: str = "rapl") -> pl.DataFrame:
    """Per run of these (measured) requests: the source's joules (CPU packages or GPUs) from its first
    send to its last end, the cumulative counters read between samples by linear interpolation and
    summed over packages or cards, and their mean watts. A run whose samples do not cover that span is
    left out."""
    spans = (requests.lazy().group_by("run_id").agg(t0=pl.col("sent_ns").min(), t1=pl.col("end_ns").max())
             .collect())
    samples = (store.scan_table(raw_dir, "telemetry")
               .filter(pl.col("run_id").is_in(spans["run_id"].implode()) & (pl.col("source") == source)
                       & (pl.col("metric") == "energy_j"))
               .group_by("run_id", "t_ns").agg(joules=pl.col("value").sum(), zones=pl.len())
               # a sample missing a package's reading (it failed once) would read as a drop: left out
               .filter(pl.col("zones") == pl.col("zones").max().over("run_id"))
               .sort("run_id", "t_ns").collect())
    rows = []
    for (run_id,), g in samples.group_by("run_id"):
        span = spans.row(by_predicate=pl.col("run_id") == run_id, named=True)
        t, j = g["t_ns"].to_numpy(), g["joules"].to_numpy()
        if t[0] > span["t0"] or t[-1] < span["t1"] or span["t1"] <= span["t0"]:
            continue
        joules = float(np.interp(span["t1"], t, j) - np.interp(span["t0"], t, j))
        rows.append({"run_id": run_id, "joules": joules, "watts": joules / ((span["t1"] - span["t0"]) / 1e9)})
    return pl.DataFrame(rows, schema={"run_id": pl.String, "joules": pl.Float64, "watts": pl.Float64})


def cell_energy(raw_dir, trials: pl.DataFrame, requests: Frame, source: str = "rapl") -> pl.DataFrame:
    """One row per cell with the source's energy: joules per output token and mean watts, each the
    mean over trials with its 95% interval and sd (speed.estimates); empty where none was read."""
    measured = trials.join(trial_energy(raw_dir, requests, source), on="run_id").filter(pl.col("output_tokens") > 0)
    measured = measured.with_columns(joules_per_token=pl.col("joules") / pl.col("output_tokens"))
    return speed.estimates(measured, metrics=METRICS)


def unmeasured(raw_dir, machine_id: str, measured_runs: list[str]) -> dict[str, int]:
    """Why energy was not read, with how many of the machine's report runs each reason covers."""
    runs = selected_runs(store.read_table(raw_dir, "run")).filter(
        (pl.col("machine_id") == machine_id) & ~pl.col("run_id").is_in(measured_runs))
    why = runs["energy_unmeasured"].fill_null("no RAPL samples were stored with these runs (gaplab reads "
                                              "RAPL since schema 9)")
    return dict(sorted(why.value_counts().rows(), key=lambda r: -r[1]))


def energy_story(raw_dir, machine_id: str, cells: pl.DataFrame, gpu_cells: pl.DataFrame | None = None) -> str:
    """The section's sentences: what the figures are, or "not measured" and why; then the GPUs'."""
    gpu = ("" if gpu_cells is None else  # gpu_cells: energy.cell_energy(..., source="gpu"), when asked
           "\n\nGPU energy per output token: each GPU's total energy counter (NVML) over the same span, summed "
           "over the cards, with their mean power; a card's counter holds the whole card, idle power included."
           if not gpu_cells.is_empty() else
           "\n\n**GPU energy: not measured**: NVML read no GPU energy counter beside these runs (no GPU, no "
           "driver, or a card without the counter).")
    measured = [r for ids in cells["run_ids"].to_list() for r in ids.split(",")] if not cells.is_empty() else []
    reasons = unmeasured(raw_dir, machine_id, measured)
    why = "; ".join(f"{markup.plain(r)} ({n} run{'s' * (n != 1)})" for r, n in reasons.items())
    if cells.is_empty():
        return f"**Energy per output token: not measured.** The CPU packages' energy counters were not read: {why}." + gpu
    text = ("Joules per output token: the CPU packages' energy (RAPL) from a trial's first request sent to its "
            "last one finished, divided by the output tokens of its successful requests, with the mean package "
            "power over the same span. A package counter holds the whole package: its idle power, the client and "
            "any other process beside the trial are in it.")
    return text + (f" Not measured for the other runs: {why}." if reasons else "") + gpu


def energy_table(cells: pl.DataFrame, gpu_cells: pl.DataFrame | None = None):
    """The cells' energy figures as a page table, CPU packages' and GPUs' (empty where none was measured)."""
    parts = [with_intervals(c, METRICS, digits=3).with_columns(counter=pl.lit(name))
             for c, name in ((cells, "CPU packages"), (gpu_cells, "GPUs")) if c is not None and not c.is_empty()]
    if not parts:
        return markup.table(None)
    return markup.table(pl.concat(parts, how="diagonal_relaxed").select(
        "model", "runtime", "quant", pl.col("concurrency").alias("users"), "counter", "trials", "joules_per_token",
        "watts", "run_ids"))
