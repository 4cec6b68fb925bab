"""The over-time frames: one run's server telemetry beside the client's own in-flight count."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gaplab.storage import backend, store

# The same quantity under each runtime's own metric name.
SERIES = {
    "llamacpp:requests_processing": "running (server)", "vllm:num_requests_running": "running (server)",
    "llamacpp:requests_deferred": "waiting (server)", "vllm:num_requests_waiting": "waiting (server)",
    "vllm:kv_cache_usage_perc": "KV cache used (%)", "vllm:gpu_cache_usage_perc": "KV cache used (%)",
    "cpu_pct": "server CPU (% of one core)", "gpu_util_pct": "GPU utilization (%)", "gpu_power_w": "GPU power (W)",
}


def in_flight(requests: pl.DataFrame, t_ns: list[int]) -> list[int]:
    """How many requests the client had sent and not yet seen end, at each instant."""
    sent, end = requests["sent_ns"].to_list(), requests["end_ns"].to_list()
    return [sum(1 for s, e in zip(sent, end) if s <= t < e) for t in t_ns]


def timeline(raw_dir: Path, run_id: str) -> pl.DataFrame:
    """One run's telemetry as (t_s, series, value), with the client's own in-flight count."""
    tele = store.read_run(raw_dir, run_id, "telemetry")
    req = store.read_run(raw_dir, run_id, "requests")
    t0 = req["sent_ns"].min()
    rows = (tele.filter(pl.col("metric").is_in(list(SERIES)))
            .with_columns(series=pl.col("metric").replace_strict(SERIES),
                          value=pl.when(pl.col("metric").str.ends_with("_usage_perc"))
                          .then(pl.col("value") * 100).otherwise(pl.col("value")))
            .group_by("t_ns", "series").agg(pl.col("value").sum()))
    times = sorted(rows["t_ns"].unique().to_list())
    client = pl.DataFrame({"t_ns": times, "series": ["in flight (client)"] * len(times),
                           "value": [float(v) for v in in_flight(req, times)]})
    return (pl.concat([rows.select("t_ns", "series", "value"), client])
            .with_columns(t_s=(pl.col("t_ns") - t0) / 1e9).sort("series", "t_s"))


def pick_timeline_run(summary: pl.DataFrame, raw_dir: Path) -> str | None:
    """The run to show over time: the newest trial at the highest load, preferring a server with
    slots for everyone."""
    sampled = {backend.name(p).split(".")[0] for p in backend.glob(raw_dir, "**/*.telemetry.parquet")}
    rows = summary.with_columns(run_id=pl.col("run_ids").str.split(",").list.last())
    rows = rows.filter(pl.col("run_id").is_in(list(sampled)))
    if rows.is_empty():
        return None
    rows = rows.filter(pl.col("concurrency") == rows["concurrency"].max())
    return rows.sort(["parallel", "requests"], descending=True, nulls_last=True)["run_id"][0]


def rss_mb(raw_dir: Path, run_ids: list[str]) -> pl.DataFrame:
    """Per run: the server process's mean resident memory (MB, children included) over the trial."""
    return (store.scan_table(raw_dir, "telemetry")
            .filter(pl.col("run_id").is_in(run_ids) & (pl.col("source") == "process")
                    & (pl.col("metric") == "rss_bytes"))
            .group_by("run_id").agg(rss_mb=pl.col("value").mean() / 1e6).collect())
