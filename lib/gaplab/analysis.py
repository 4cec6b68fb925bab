"""Summaries of the raw rows, in polars: what the charts and the prose read.

Definitions (the methodology page states them for readers):
- TTFT: first chunk carrying output text minus the moment the request was sent.
- queue: sent minus scheduled (time the request waited inside the client).
- decode tok/s (per user): (completion tokens - 1) / (last token - first token).
- aggregate tok/s: completion tokens of all measured requests of the cell / the
  span from the first send to the last end of the measured phase.
- ITL: (last token - first token) / (token chunks - 1), only where every chunk
  carried exactly one token (token chunks == completion tokens).
Percentiles interpolate linearly between ranks (numpy's default).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gaplab import store
from gaplab.config import RAW_DIR

NS_PER_MS = 1_000_000
CELL = ["machine_id", "hardware_id", "runtime", "runtime_kind", "model", "quant", "workload", "concurrency",
        "threads", "parallel", "cell_key"]
GROUP = CELL + ["series_id", "trial", "run_id"]
# The headline metrics: each cell gets the mean over its trials, a 95% interval and the sd.
METRICS = ["aggregate_tok_s", "per_user_tok_s", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "itl_mean_ms"]
HIGHER_IS_BETTER = {"aggregate_tok_s": True, "per_user_tok_s": True, "ttft_p50_ms": False, "ttft_p99_ms": False,
                    "e2e_p50_ms": False, "itl_mean_ms": False}


def with_run_keys(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows of schema-1 files name no machine, series or trial: each was one trial, on a machine
    known only by its class."""
    return frame.with_columns(machine_id=pl.coalesce("machine_id", "hardware_id"),
                              series_id=pl.coalesce("series_id", "run_id"), trial=pl.coalesce("trial", pl.lit(1)))


def selected_runs(runs: pl.DataFrame) -> pl.DataFrame:
    """The runs the report combines: per machine and cell, the complete trials of its newest
    series (a forced rerun starts a new series; a resumed sweep continues the last one)."""
    runs = with_run_keys(runs)
    newest = (runs.group_by("machine_id", "cell_key").agg(pl.col("series_id").sort_by("run_id").last()))
    return runs.join(newest, on=["machine_id", "cell_key", "series_id"], how="semi").filter(
        pl.col("status") == "complete")


def with_latencies(requests: pl.DataFrame) -> pl.DataFrame:
    span = pl.col("last_token_ns") - pl.col("first_token_ns")
    return requests.with_columns(
        ttft_ms=(pl.col("first_token_ns") - pl.col("sent_ns")) / NS_PER_MS,
        e2e_ms=(pl.col("end_ns") - pl.col("sent_ns")) / NS_PER_MS,
        queue_ms=(pl.col("sent_ns") - pl.col("scheduled_ns")) / NS_PER_MS,
        decode_tok_s=pl.when((pl.col("completion_tokens") > 1) & (span > 0))
        .then((pl.col("completion_tokens") - 1) / (span / 1e9)).otherwise(None),
        itl_ms=pl.when((pl.col("n_token_chunks") == pl.col("completion_tokens")) & (pl.col("n_token_chunks") > 1))
        .then(span / (pl.col("n_token_chunks") - 1) / NS_PER_MS).otherwise(None),
        ok=pl.col("error").is_null(),
    )


def measured_requests(raw_dir: Path = RAW_DIR, machine_id: str | None = None) -> pl.DataFrame:
    """Measured (non-warmup) request rows of the trials the report combines."""
    runs = selected_runs(store.read_table(raw_dir, "run"))
    req = with_run_keys(store.read_table(raw_dir, "requests")).join(runs.select("run_id"), on="run_id", how="semi")
    if machine_id:
        req = req.filter(pl.col("machine_id") == machine_id)
    return with_latencies(req.filter(~pl.col("warmup")))


def error_kind(message: str) -> str:
    """A short name for an error message, for counting errors by kind."""
    m = message.lower()
    for key, kind in (("truncated", "truncated"), ("reset", "connection reset"), ("no complete response", "timeout"),
                      ("malformed", "malformed stream"), ("cancelled", "cancelled"), ("refused", "refused"),
                      ("before its body was complete", "incomplete body")):
        if key in m:
            return kind
    if m.startswith("http "):
        return message[:8]
    return "other"


def trial_summary(requests: pl.DataFrame) -> pl.DataFrame:
    """One row per trial (run): throughput and latency of its measured requests. Requests that
    failed count in `errors` and in the span, never in the token or latency figures."""
    ok = pl.col("ok")
    return (requests.group_by(GROUP).agg(
        requests=pl.len(),
        errors=(~ok).sum(),
        error_messages=pl.col("error").drop_nulls(),
        output_tokens=pl.col("completion_tokens").filter(ok).sum(),
        span_s=(pl.col("end_ns").max() - pl.col("sent_ns").min()) / 1e9,
        ttft_p50_ms=pl.col("ttft_ms").filter(ok).quantile(0.5, interpolation="linear"),
        ttft_p99_ms=pl.col("ttft_ms").filter(ok).quantile(0.99, interpolation="linear"),
        e2e_p50_ms=pl.col("e2e_ms").filter(ok).quantile(0.5, interpolation="linear"),
        per_user_tok_s=pl.col("decode_tok_s").filter(ok).median(),
        itl_mean_ms=pl.col("itl_ms").filter(ok).mean(),
        queue_p99_ms=pl.col("queue_ms").quantile(0.99, interpolation="linear"),
        server_decode_tok_s=(pl.col("server_predicted_n").filter(ok).sum()
                             / (pl.col("server_predicted_ms").filter(ok).sum() / 1e3)),
    ).with_columns(
        aggregate_tok_s=pl.col("output_tokens") / pl.col("span_s"),
        config=pl.col("runtime") + " · " + pl.col("quant"),
    ).sort(["model", "runtime", "quant", "concurrency", "trial"]))


def trial_pools(trials: pl.DataFrame, metrics: list[str] = METRICS) -> dict:
    """(machine_id, runtime, metric) -> the trial-to-trial spread pooled over that runtime's cells
    on that machine (stats.pool), for the intervals."""
    from gaplab import stats

    out = {}
    for (machine, runtime), g in trials.group_by("machine_id", "runtime"):
        cells = g.group_by("cell_key")
        for m in metrics:
            if m in g.columns:
                out[(machine, runtime, m)] = stats.pool([c[m].to_list() for _, c in cells])
    return out


def estimates(trials: pl.DataFrame, precision: float | None = None) -> pl.DataFrame:
    """One row per cell: each metric's mean over trials (m), its 95% interval (m_lo, m_hi) and
    the sd across trials (m_sd), with trial, request and error counts (methodology page).
    precision: the target half-width of aggregate tok/s; precision_met says whether it was reached."""
    from gaplab import stats

    pools = trial_pools(trials)
    rows = []
    for key, g in trials.group_by(CELL, maintain_order=True):
        row = dict(zip(CELL, key))
        row.update(trials=g.height, requests=int(g["requests"].sum()), errors=int(g["errors"].sum()),
                   run_ids=",".join(sorted(g["run_id"].to_list())), config=f"{row['runtime']} · {row['quant']}",
                   server_decode_tok_s=g["server_decode_tok_s"].mean())
        kinds: dict[str, int] = {}
        for msgs in g["error_messages"].to_list():
            for msg in msgs:
                kinds[error_kind(msg)] = kinds.get(error_kind(msg), 0) + 1
        row["error_kinds"] = ", ".join(f"{k}×{n}" for k, n in sorted(kinds.items()))
        for m in METRICS:
            iv = stats.mean_interval(g[m].to_list(), pools.get((row["machine_id"], row["runtime"], m)))
            row.update({m: iv.estimate if iv else None, f"{m}_lo": iv.lo if iv else None,
                        f"{m}_hi": iv.hi if iv else None, f"{m}_sd": iv.sd if iv else None})
        agg = stats.mean_interval(g["aggregate_tok_s"].to_list(),
                                  pools.get((row["machine_id"], row["runtime"], "aggregate_tok_s")))
        row["halfwidth_pct"] = agg.halfwidth * 100 if agg and agg.halfwidth is not None else None
        row["precision_met"] = (precision is not None and row["halfwidth_pct"] is not None
                                and row["halfwidth_pct"] <= precision * 100)
        rows.append(row)
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame(rows, infer_schema_length=None).sort(["model", "runtime", "quant", "concurrency"])


def cell_summary(requests: pl.DataFrame, precision: float | None = None) -> pl.DataFrame:
    """Requests -> per-cell estimates over their trials (trial_summary, then estimates)."""
    return estimates(trial_summary(requests), precision)


def precision_target(raw_dir: Path, machine_id: str) -> float | None:
    """The precision the machine's newest runs aimed for (load.precision), if they recorded one."""
    runs = selected_runs(store.read_table(raw_dir, "run")).filter(pl.col("machine_id") == machine_id)
    targets = runs.sort("run_id")["precision_target"].drop_nulls()
    return float(targets[-1]) if targets.len() else None


def pick_machine(raw_dir: Path, machine_id: str = "") -> str:
    """The machine a page reports on: the one asked for, else this one if it has runs, else the
    one with the newest run (then the page says these are reference runs from elsewhere)."""
    from gaplab.hardware import machine_id as this_machine

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


def setup_story(raw_dir: Path, machine_id: str, summary: pl.DataFrame) -> str:
    """Where, when and how the figures were measured, and which other machines the store holds."""
    from gaplab.hardware import machine_id as this_machine

    all_runs = selected_runs(store.read_table(raw_dir, "run"))
    runs = all_runs.filter(pl.col("machine_id") == machine_id)
    if runs.is_empty():
        return f"No complete runs for machine `{machine_id}` yet: run `make report` or `gaplab sweep`."
    r = runs.sort("run_id").row(-1, named=True)
    versions = ", ".join(sorted(runs["runtime_version"].unique().to_list()))
    derived = runs.filter(pl.col("model_note").str.starts_with("requantized"))["quant"].unique().sort().to_list()
    whose = ("this machine" if machine_id == this_machine() else
             "another machine (reference runs: not measured where this report was built)")
    trials = summary["trials"] if "trials" in summary.columns else pl.Series([1])
    text = (f"Measured on {whose}, `{machine_id}` of class `{r['hardware_id']}`: {r['cpu_model']}, "
            f"{r['cpu_cores']} cores, {r['memory_gib']} GiB, between {runs['started_at'].min()} and "
            f"{runs['finished_at'].max()}. {summary.height} cells, {int(trials.sum())} trials "
            f"({int(trials.min())} to {int(trials.max())} per cell), {int(summary['requests'].sum())} measured "
            f"requests, {int(summary['errors'].sum())} errors. Runtime: {versions}.")
    if int(trials.max()) == 1:
        text += " Each cell was measured once: 1 trial, no interval."
    background = runs["other_cores"].drop_nulls().to_list()  # speed trials only: quality runs have none
    if background:
        from gaplab.prose import background_story

        text += " " + background_story(background)
    if derived:
        text += (f" The {', '.join(derived)} files were made on this machine with llama-quantize from the "
                 f"4-bit files that ship on PyPI, so they cannot be more faithful than those 4-bit files; "
                 f"their speed is real, their quality is not the original model's.")
    others = (all_runs.filter(pl.col("machine_id") != machine_id).group_by("machine_id", "hardware_id")
              .agg(pl.col("cell_key").n_unique().alias("cells"), pl.col("started_at").min().alias("start"),
                   pl.col("finished_at").max().alias("end")).sort("machine_id"))
    for o in others.iter_rows(named=True):
        text += (f"\n\nThe store also holds reference runs of machine `{o['machine_id']}` (class "
                 f"`{o['hardware_id']}`): {o['cells']} cells measured between {o['start']} and {o['end']}; "
                 f"set the page's `machine_id` parameter to show them.")
    return text


# ---------------------------------------------------------------- published figures


def read_reference(path: Path | None = None) -> pl.DataFrame:
    from gaplab.config import REFERENCE_DIR

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


def scaling_story(table: pl.DataFrame) -> str:
    ours = table.filter(pl.col("who") == "measured here")
    pub = table.filter(pl.col("who") == "published")
    if ours.is_empty() or pub.is_empty():
        return ""
    best_pub, worst_pub = pub.row(0, named=True), pub.row(-1, named=True)
    parts = []
    for rt in ours["runtime"].unique(maintain_order=True):
        r = ours.filter(pl.col("runtime") == rt)
        parts.append(f"{rt} ×{r['scaling'].min():.2f} to ×{r['scaling'].max():.2f}")
    return (f"Going from one user to many multiplies total throughput by "
            f"×{best_pub['scaling']:.1f} for {best_pub['runtime']} {best_pub['quant']} on "
            f"{best_pub['hardware']} ({best_pub['users']} users, {best_pub['source']}) but only "
            f"×{worst_pub['scaling']:.2f} for {worst_pub['runtime']} {worst_pub['quant']} on {worst_pub['hardware']}. "
            f"Here, from 1 to {ours['users'].max()} users: " + "; ".join(parts) + ". "
            f"Adding users multiplies throughput only when one decode step serves many sequences for "
            f"little more than the cost of one: true while the step is bound by reading the weights "
            f"from memory, as on a GPU at small batch sizes; the cost of a batched step on this machine "
            f"is in the per-user section above.")


# ---------------------------------------------------------------- where the model ran (Ollama)


def placement_story(raw_dir: Path, machine_id: str | None = None) -> str:
    """Plain words for every cell whose model was not wholly in GPU memory (Ollama's /api/ps)."""
    import json

    from gaplab.runtimes.ollama import describe, where

    runs = selected_runs(store.read_table(raw_dir, "run"))
    if machine_id:
        runs = runs.filter(pl.col("machine_id") == machine_id)
    lines = []
    for row in runs.sort("cell_id").iter_rows(named=True):
        size, vram = row["model_bytes_loaded"], row["model_bytes_gpu"]
        if size is None and (row["schema_version"] or 1) < 4:  # older runs: only in meta_json
            after = (json.loads(row["meta_json"]).get("ollama_placement") or {}).get("after") or {}
            size, vram = after.get("size"), after.get("size_vram")
        if not size:
            continue
        after = where(size, vram or 0)
        if after["split"] or after["cpu_only"]:
            lines.append(f"- **{row['model']} {row['quant']} on {row['runtime']}** at {row['concurrency']} "
                         f"users: the model was {describe(after)}. Its speed is not the GPU's.")
    return ("Cells where Ollama did not hold the whole model in GPU memory:\n\n" + "\n".join(lines)) if lines else ""


# ---------------------------------------------------------------- telemetry and cold starts

# The same quantity under each runtime's own metric name.
SERIES = {
    "llamacpp:requests_processing": "running (server)", "vllm:num_requests_running": "running (server)",
    "llamacpp:requests_deferred": "waiting (server)", "vllm:num_requests_waiting": "waiting (server)",
    "vllm:kv_cache_usage_perc": "KV cache used (%)", "vllm:gpu_cache_usage_perc": "KV cache used (%)",
    "cpu_pct": "server CPU (% of one core)", "gpu_util_pct": "GPU utilization (%)",
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
    sampled = {p.name.split(".")[0] for p in Path(raw_dir).glob("**/*.telemetry.parquet")}
    rows = summary.with_columns(run_id=pl.col("run_ids").str.split(",").list.last())
    rows = rows.filter(pl.col("run_id").is_in(list(sampled)))
    if rows.is_empty():
        return None
    rows = rows.filter(pl.col("concurrency") == rows["concurrency"].max())
    return rows.sort(["parallel", "requests"], descending=True, nulls_last=True)["run_id"][0]


def cold_starts(raw_dir: Path, machine_id: str | None = None) -> pl.DataFrame:
    """Per server gaplab started: seconds from process start to healthy, and to the first token
    of a probe request sent as soon as it was healthy."""
    import json

    runs = with_run_keys(store.read_table(raw_dir, "run"))
    if machine_id:
        runs = runs.filter(pl.col("machine_id") == machine_id)
    servers = {}
    for row in runs.iter_rows(named=True):
        started, healthy, first = row["server_started_ns"], row["server_healthy_ns"], row["server_first_token_ns"]
        if started is None and (row["schema_version"] or 1) < 4:  # older runs: only in meta_json
            srv = json.loads(row["meta_json"]).get("server") or {}
            started, healthy, first = srv.get("started_ns"), srv.get("healthy_ns"), srv.get("first_token_ns")
        if started and healthy and first:
            servers[(row["runtime"], started)] = {
                "runtime": row["runtime"], "runtime_kind": row["runtime_kind"], "model": row["model"],
                "quant": row["quant"], "to_healthy_s": (healthy - started) / 1e9,
                "to_first_token_s": (first - started) / 1e9}
    return pl.DataFrame(list(servers.values())).sort("runtime", "model", "quant") if servers else pl.DataFrame()


def cold_start_table(starts: pl.DataFrame, reference: pl.DataFrame) -> pl.DataFrame:
    """Our cold starts (the slowest start of each runtime, model and quant) beside published ones."""
    rows = []
    if not starts.is_empty():
        worst = starts.group_by("runtime", "model", "quant").agg(pl.col("to_healthy_s").max(),
                                                                 pl.col("to_first_token_s").max())
        for r in worst.iter_rows(named=True):
            label = f"{r['runtime']} · {r['model']} {r['quant']} (here)"
            rows += [{"who": "measured here", "label": label, "phase": "healthy", "seconds": r["to_healthy_s"],
                      "source": "gaplab"},
                     {"who": "measured here", "label": label, "phase": "first token",
                      "seconds": r["to_first_token_s"], "source": "gaplab"}]
    pub = reference.filter(pl.col("metric").is_in(["cold_start_s", "startup_compile_s"]))
    for r in pub.iter_rows(named=True):
        rows.append({"who": "published", "label": f"{r['runtime']} {r['quant']} · {r['model']} · {r['hardware']}",
                     "phase": "published cold start" if r["metric"] == "cold_start_s" else "published compile",
                     "seconds": r["value"], "source": r["source"]})
    return pl.DataFrame(rows)
