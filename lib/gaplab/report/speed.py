"""The throughput and latency page's frames: the trials the report combines, one estimate
per cell with its interval (methodology page), and our scaling beside published figures."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gaplab.analysis import stats, stopping
from gaplab.analysis.metrics import CELL, METRICS, selected_runs, trial_summary, with_latencies, with_run_keys
from gaplab.spec.config import RAW_DIR
from gaplab.storage import run_record, store
from gaplab.storage.backend import Root


def scan_requests(raw_dir: Root = RAW_DIR, machine_id: str | None = None,
                  study: str | None = "matrix") -> pl.LazyFrame:
    """Measured (non-warmup) request rows of the trials the report combines, of one study
    (metrics.in_study: the matrix pages by default), as a lazy scan of the store: nothing is
    read until it is collected, and then only the columns asked for, of those runs' files."""
    runs = selected_runs(store.read_table(raw_dir, "run"), study)
    if machine_id:
        runs = runs.filter(pl.col("machine_id") == machine_id)
    # the runs by id, not a join: the filter reaches the scan, and every file of another run (one
    # run_id per file, in its statistics) or another machine is skipped unread
    req = store.scan_table(raw_dir, "requests").filter(pl.col("run_id").is_in(runs["run_id"].implode())
                                                        & ~pl.col("warmup"))
    return with_latencies(with_run_keys(req))


def measured_requests(raw_dir: Root = RAW_DIR, machine_id: str | None = None, study: str | None = "matrix",
                      columns: list[str] | None = None) -> pl.DataFrame:
    """scan_requests, read: every column (the store's and with_latencies'), or only `columns`."""
    scan = scan_requests(raw_dir, machine_id, study)
    return (scan.select(columns) if columns else scan).collect()


def runs(raw_dir: Path) -> pl.DataFrame:
    """The store's runs that count, every machine's: what the setup and placement sentences read."""
    return selected_runs(store.read_table(raw_dir, "run"))


def estimates(trials: pl.DataFrame, precision: float | None = None, metrics: list[str] = METRICS) -> pl.DataFrame:
    """One row per cell: each metric's mean over trials (m), its 95% interval (m_lo, m_hi) and
    the sd across trials (m_sd), with trial, request and error counts (methodology page).
    precision: the target half-width of aggregate tok/s; precision_met says whether it was reached."""
    pools = stats.runtime_pools(trials, metrics)
    rows = []
    for key, g in trials.group_by(CELL, maintain_order=True):
        row = dict(zip(CELL, key))
        row.update(trials=g.height, requests=int(g["requests"].sum()), errors=int(g["errors"].sum()),
                   run_ids=",".join(sorted(g["run_id"].to_list())), config=f"{row['runtime']} · {row['quant']}",
                   server_decode_tok_s=g["server_decode_tok_s"].mean())
        kinds: dict[str, int] = {}
        for trial_kinds in g["error_kinds"].to_list():
            for kind in trial_kinds:
                kinds[kind] = kinds.get(kind, 0) + 1
        row["error_kinds"] = ", ".join(f"{k}×{n}" for k, n in sorted(kinds.items()))
        for m in metrics:
            iv = stats.mean_interval(g[m].to_list(), pools.get((row["machine_id"], row["runtime"], m)))
            row.update({m: iv.estimate if iv else None, f"{m}_lo": iv.lo if iv else None,
                        f"{m}_hi": iv.hi if iv else None, f"{m}_sd": iv.sd if iv else None})
        agg = stats.mean_interval(g["aggregate_tok_s"].to_list(),
                                  pools.get((row["machine_id"], row["runtime"], "aggregate_tok_s")))
        row["halfwidth_pct"] = agg.halfwidth * 100 if agg and agg.halfwidth is not None else None
        row["precision_met"] = precision is not None and stopping.precise(
            g["aggregate_tok_s"].to_list(), precision, pools.get((row["machine_id"], row["runtime"], "aggregate_tok_s")))
        rows.append(row)
    if not rows:  # no cells: the columns still exist, so a page's filters and joins give empty frames
        return pl.DataFrame(schema={**{c: trials.schema.get(c, pl.String) for c in CELL},
                                    "trials": pl.Int64, "requests": pl.Int64, "errors": pl.Int64, "run_ids": pl.String,
                                    "config": pl.String, "server_decode_tok_s": pl.Float64, "error_kinds": pl.String,
                                    **{f"{m}{x}": pl.Float64 for m in metrics for x in ("", "_lo", "_hi", "_sd")},
                                    "halfwidth_pct": pl.Float64, "precision_met": pl.Boolean})
    return pl.DataFrame(rows, infer_schema_length=None).sort(["model", "runtime", "quant", "concurrency", "rate"],
                                                             nulls_last=True)


def cell_summary(requests: pl.DataFrame | pl.LazyFrame, precision: float | None = None) -> pl.DataFrame:
    """Requests (measured_requests, or scan_requests unread) -> per-cell estimates over their
    trials (trial_summary, then estimates)."""
    return estimates(trial_summary(requests), precision)


def precision_target(raw_dir: Root, machine_id: str) -> float | None:
    """The precision the machine's newest runs aimed for (load.precision), if they recorded one."""
    runs = selected_runs(store.read_table(raw_dir, "run")).filter(pl.col("machine_id") == machine_id)
    targets = runs.sort("run_id")["precision_target"].drop_nulls()
    return float(targets[-1]) if targets.len() else None


def equivalence_margin(raw_dir: Root, machine_id: str) -> float:
    """The equivalence margin the machine's newest runs were measured under (their scenario's
    load.equivalence_margin, a column of the run record), else stats.MARGIN."""
    runs = selected_runs(store.read_table(raw_dir, "run")).filter(pl.col("machine_id") == machine_id)
    margins = run_record.settings(runs).sort("run_id")["equivalence_margin"].drop_nulls()
    return float(margins[-1]) if margins.len() else stats.MARGIN


def pick_machine(raw_dir: Root, machine_id: str = "") -> str:
    """The machine a page reports on: the one asked for, else this one if it has runs, else the
    one with the newest run (then the page says these are reference runs from elsewhere)."""
    from gaplab.machine.hardware import machine_id as this_machine

    runs = with_run_keys(store.read_table(raw_dir, "run"))
    known = runs["machine_id"].unique().to_list()
    if machine_id:
        if machine_id not in known:
            raise ValueError(f"machine_id: {machine_id!r} has no runs in {raw_dir}; known: {sorted(known)}")
        return machine_id
    here = this_machine()
    if here in known or not known:
        return here
    return runs.sort("run_id")["machine_id"][-1]


def read_reference(path: Path | None = None) -> pl.DataFrame:
    from gaplab.spec.config import REFERENCE_DIR

    return pl.read_csv(path or REFERENCE_DIR / "published_results.csv")


def scaling(summary: pl.DataFrame, reference: pl.DataFrame) -> pl.DataFrame:
    """Total tok/s at the highest load over tok/s for one user, ours beside published ones.

    Published single-user figures are aggregate_tok_s at 1 user, or decode_tok_s where a
    source gave only that (for one user the two are the same quantity).
    """
    keys = ["source", "hardware", "model", "runtime", "quant"]
    one = (reference.filter((pl.col("concurrency") == 1) & pl.col("metric").is_in(["aggregate_tok_s", "decode_tok_s"]))
           .sort("metric").group_by(keys).first().select(*keys, tok_s_1=pl.col("value")))
    many = (reference.filter((pl.col("metric") == "aggregate_tok_s") & (pl.col("concurrency") > 1))
            .sort("concurrency").group_by(keys).last().select(*keys, users=pl.col("concurrency"),
                                                              tok_s_n=pl.col("value")))
    published = one.join(many, on=keys).with_columns(pl.lit("published").alias("who"))
    hi = summary["concurrency"].max()
    ours = (summary.filter(pl.col("concurrency") == 1).select("model", "runtime", "quant", tok_s_1="aggregate_tok_s")
            .join(summary.filter(pl.col("concurrency") == hi)
                  .select("model", "runtime", "quant", "hardware_id", users="concurrency", tok_s_n="aggregate_tok_s"),
                  on=["model", "runtime", "quant"])
            .with_columns(source=pl.lit("gaplab (this report)"), who=pl.lit("measured here"))
            .rename({"hardware_id": "hardware"}))
    cols = ["who", "source", "hardware", "model", "runtime", "quant", "users", "tok_s_1", "tok_s_n"]
    return (pl.concat([ours.select(cols), published.select(cols)], how="vertical_relaxed")
            .with_columns(scaling=pl.col("tok_s_n") / pl.col("tok_s_1"),
                          label=pl.col("runtime") + " " + pl.col("quant") + " · " + pl.col("model")
                          + " · " + pl.col("hardware"))
            .sort("scaling", descending=True))
