"""Summaries of the raw rows, in polars: what the charts and the prose read.

Definitions (also in the methodology page):
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
GROUP = ["hardware_id", "runtime", "runtime_kind", "model", "quant", "workload", "concurrency",
         "threads", "parallel", "cell_key", "run_id"]


def latest_complete_runs(runs: pl.DataFrame) -> pl.DataFrame:
    """The newest complete run of each cell on each machine (reruns replace older ones in the report)."""
    return (runs.filter(pl.col("status") == "complete")
            .sort("run_id").group_by(["hardware_id", "cell_key"]).last())


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


def measured_requests(raw_dir: Path = RAW_DIR, hardware_id: str | None = None) -> pl.DataFrame:
    """Measured (non-warmup) request rows of the latest complete run of every cell."""
    runs = latest_complete_runs(store.read_table(raw_dir, "run"))
    req = store.read_table(raw_dir, "requests").join(runs.select("run_id"), on="run_id", how="semi")
    if hardware_id:
        req = req.filter(pl.col("hardware_id") == hardware_id)
    return with_latencies(req.filter(~pl.col("warmup")))


def cell_summary(requests: pl.DataFrame) -> pl.DataFrame:
    """One row per run: throughput and latency percentiles of its measured requests."""
    ok = pl.col("ok")
    return (requests.group_by(GROUP).agg(
        requests=pl.len(),
        errors=(~ok).sum(),
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
    ).sort(["model", "runtime", "quant", "concurrency"]))


def ratio_at(summary: pl.DataFrame, metric: str, num: dict, den: dict, concurrency: int) -> float | None:
    """metric of the row matching num over the row matching den, at one concurrency level."""
    def pick(sel: dict) -> float | None:
        rows = summary.filter(pl.col("concurrency") == concurrency)
        for k, v in sel.items():
            rows = rows.filter(pl.col(k) == v)
        return rows[metric][0] if rows.height == 1 else None

    a, b = pick(num), pick(den)
    return a / b if a is not None and b else None


def crossover(summary: pl.DataFrame, metric: str, a: dict, b: dict) -> int | None:
    """Lowest concurrency where config a's metric exceeds config b's, after being below it."""
    def series(sel: dict) -> dict:
        rows = summary
        for k, v in sel.items():
            rows = rows.filter(pl.col(k) == v)
        return dict(zip(rows["concurrency"].to_list(), rows[metric].to_list()))

    sa, sb = series(a), series(b)
    levels = sorted(set(sa) & set(sb))
    below = False
    for c in levels:
        if sa[c] < sb[c]:
            below = True
        elif below and sa[c] > sb[c]:
            return c
    return None


# ---------------------------------------------------------------- prose computed from the data


def _rows(df: pl.DataFrame, **eq) -> pl.DataFrame:
    for k, v in eq.items():
        df = df.filter(pl.col(k) == v)
    return df


def _best(df: pl.DataFrame, metric: str, lowest: bool = False) -> dict | None:
    df = df.drop_nulls(metric).sort(metric, descending=not lowest)
    return df.row(0, named=True) if df.height else None


def throughput_story(summary: pl.DataFrame) -> str:
    """Per model and quant: who leads at the highest load, by how much, and how each runtime scales."""
    if summary.is_empty():
        return "No measured cells yet: run `make report` or `gaplab sweep`."
    lo, hi = summary["concurrency"].min(), summary["concurrency"].max()
    out = []
    for model in summary["model"].unique(maintain_order=True):
        for quant in _rows(summary, model=model)["quant"].unique(maintain_order=True):
            cell = _rows(summary, model=model, quant=quant)
            at_hi = cell.filter(pl.col("concurrency") == hi).sort("aggregate_tok_s", descending=True)
            if at_hi.height >= 2:
                a, b = at_hi.row(0, named=True), at_hi.row(-1, named=True)
                text = (f"**{model} {quant}**: at {hi} users {a['runtime']} delivers "
                        f"{a['aggregate_tok_s']:.1f} output tok/s, {a['aggregate_tok_s'] / b['aggregate_tok_s']:.2f}× "
                        f"{b['runtime']} ({b['aggregate_tok_s']:.1f} tok/s).")
            elif at_hi.height == 1:
                a = at_hi.row(0, named=True)
                text = f"**{model} {quant}**: at {hi} users {a['runtime']} delivers {a['aggregate_tok_s']:.1f} tok/s."
            else:
                continue
            growth = []
            for rt in cell["runtime"].unique(maintain_order=True):
                r1, rn = _rows(cell, runtime=rt, concurrency=lo), _rows(cell, runtime=rt, concurrency=hi)
                if r1.height and rn.height and lo != hi:
                    growth.append(f"{rt} ×{rn['aggregate_tok_s'][0] / r1['aggregate_tok_s'][0]:.2f}")
            if growth:
                text += f" From {lo} to {hi} users total throughput grows " + ", ".join(growth) + "."
            best_lo = _best(cell.filter(pl.col("concurrency") == lo), "aggregate_tok_s")
            if best_lo and at_hi.height >= 2 and best_lo["runtime"] != at_hi["runtime"][0]:
                text += (f" The ranking flips: with {lo} user {best_lo['runtime']} is ahead "
                         f"({best_lo['aggregate_tok_s']:.1f} tok/s).")
            out.append(text)
    return "\n\n".join(out)


def per_user_story(summary: pl.DataFrame) -> str:
    """How much decode speed one user keeps as others join, and what a batched step costs."""
    lo = summary["concurrency"].min()
    out = []
    for key, cell in summary.group_by(["model", "runtime", "quant"], maintain_order=True):
        r1 = _rows(cell, concurrency=lo)
        if not r1.height or r1["per_user_tok_s"][0] is None:
            continue
        alone, parallel = r1["per_user_tok_s"][0], r1["parallel"][0]
        steps = []
        for row in cell.filter(pl.col("concurrency") > lo).sort("concurrency").iter_rows(named=True):
            if row["per_user_tok_s"] is None:
                continue
            text = f"{row['per_user_tok_s']:.1f} at {row['concurrency']} ({row['per_user_tok_s'] / alone:.0%})"
            if parallel and row["concurrency"] <= parallel and lo == 1:
                # every user decodes in the same steps: each of them now waits this much per token
                cost = alone / row["per_user_tok_s"]
                text += f", time per token {cost:.1f}× a lone user's"
            steps.append(text)
        out.append(f"- {key[0]} {key[2]} on {key[1]}: {alone:.1f} tok/s per user alone; " + "; ".join(steps) + ".")
    if not out:
        return ""
    return ("Decode speed seen by one user once its first token arrived. Where the server has a slot "
            "for every user, all of them advance in the same steps, so each user's time per token, "
            "against a lone user's, is what one shared step costs (steps that also process a newcomer's "
            "prompt included). Below n for n users, batching gains over serving them one after the "
            "other; above n, it loses.\n\n" + "\n".join(out))


def ttft_story(summary: pl.DataFrame) -> str:
    """Where waiting for the first token comes from: queueing behind other users."""
    hi = summary["concurrency"].max()
    at_hi = summary.filter(pl.col("concurrency") == hi).drop_nulls("ttft_p50_ms")
    if at_hi.is_empty():
        return ""
    worst = at_hi.sort("ttft_p99_ms", descending=True).row(0, named=True)
    best = at_hi.sort("ttft_p99_ms").row(0, named=True)
    return (f"At {hi} users the slowest first token (p99) is {worst['ttft_p99_ms'] / 1000:.2f} s with "
            f"{worst['runtime']} on {worst['model']} {worst['quant']}, against {best['ttft_p99_ms'] / 1000:.2f} s "
            f"with {best['runtime']} on {best['model']} {best['quant']}. A server with fewer slots than users "
            f"makes the others wait for whole responses; one with a slot per user makes all of them share "
            f"each decode step, so each first token waits for the others' prompts to be processed.")


def pick_hardware(raw_dir: Path, hardware_id: str = "") -> str:
    """The machine a page reports on: the one asked for, else this one if it has data, else the newest."""
    from gaplab.hardware import hardware

    runs = store.read_table(raw_dir, "run")
    known = runs["hardware_id"].unique().to_list()
    if hardware_id:
        if hardware_id not in known:
            raise ValueError(f"hardware_id: {hardware_id!r} has no runs in {raw_dir}; known: {known}")
        return hardware_id
    here = hardware()["hardware_id"]
    if here in known or not known:
        return here
    return runs.sort("run_id")["hardware_id"][-1]


def setup_story(raw_dir: Path, hardware_id: str, summary: pl.DataFrame) -> str:
    """Where and how the figures were measured, in a paragraph."""
    runs = latest_complete_runs(store.read_table(raw_dir, "run")).filter(pl.col("hardware_id") == hardware_id)
    if runs.is_empty():
        return f"No complete runs for machine `{hardware_id}` yet: run `make report` or `gaplab sweep`."
    r = runs.sort("run_id").row(-1, named=True)
    versions = ", ".join(sorted(runs["runtime_version"].unique().to_list()))
    derived = runs.filter(pl.col("model_note").str.starts_with("requantized"))["quant"].unique().sort().to_list()
    text = (f"Measured on `{hardware_id}`: {r['cpu_model']}, {r['cpu_cores']} cores, {r['memory_gib']} GiB, "
            f"between {runs['started_at'].min()} and {runs['finished_at'].max()}. "
            f"{summary.height} cells, {int(summary['requests'].sum())} measured requests, "
            f"{int(summary['errors'].sum())} errors. Runtime: {versions}.")
    if derived:
        text += (f" The {', '.join(derived)} files were made on this machine with llama-quantize from the "
                 f"4-bit files that ship on PyPI, so they cannot be more faithful than those 4-bit files; "
                 f"their speed is real, their quality is not the original model's.")
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


def placement_story(raw_dir: Path, hardware_id: str | None = None) -> str:
    """Plain words for every cell whose model was not wholly in GPU memory (Ollama's /api/ps)."""
    import json

    from gaplab.runtimes.ollama import describe

    runs = latest_complete_runs(store.read_table(raw_dir, "run"))
    if hardware_id:
        runs = runs.filter(pl.col("hardware_id") == hardware_id)
    lines = []
    for row in runs.sort("cell_id").iter_rows(named=True):
        after = (json.loads(row["meta_json"]).get("ollama_placement") or {}).get("after")
        if after and (after["split"] or after["cpu_only"]):
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
    """The run to show over time: the highest load, preferring a server with slots for everyone."""
    sampled = {p.name.split(".")[0] for p in Path(raw_dir).glob("**/*.telemetry.parquet")}
    hi = summary.filter(pl.col("run_id").is_in(list(sampled)))
    if hi.is_empty():
        return None
    hi = hi.filter(pl.col("concurrency") == hi["concurrency"].max())
    return hi.sort(["parallel", "requests"], descending=True, nulls_last=True)["run_id"][0]


def cold_starts(raw_dir: Path, hardware_id: str | None = None) -> pl.DataFrame:
    """Per server gaplab started: seconds from process start to healthy, and to the first token
    of a probe request sent as soon as it was healthy."""
    import json

    runs = store.read_table(raw_dir, "run")
    if hardware_id:
        runs = runs.filter(pl.col("hardware_id") == hardware_id)
    servers = {}
    for row in runs.iter_rows(named=True):
        srv = json.loads(row["meta_json"]).get("server") or {}
        if srv.get("started_ns") and srv.get("healthy_ns") and srv.get("first_token_ns"):
            servers[(row["runtime"], srv["started_ns"])] = {
                "runtime": row["runtime"], "runtime_kind": row["runtime_kind"], "model": row["model"],
                "quant": row["quant"], "to_healthy_s": (srv["healthy_ns"] - srv["started_ns"]) / 1e9,
                "to_first_token_s": (srv["first_token_ns"] - srv["started_ns"]) / 1e9}
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


def runtime_story(summary: pl.DataFrame) -> str:
    """Where a runtime overtakes another on the same model (aggregate tok/s), per quant pair."""
    out = []
    for model in summary["model"].unique(maintain_order=True):
        m = summary.filter(pl.col("model") == model)
        kinds = m["runtime"].unique(maintain_order=True).to_list()
        if len(kinds) < 2:
            continue
        best = (m.group_by("runtime", "quant").agg(pl.col("aggregate_tok_s").max())
                .sort("aggregate_tok_s", descending=True).group_by("runtime", maintain_order=True).first())
        configs = [dict(runtime=r["runtime"], quant=r["quant"]) for r in best.iter_rows(named=True)]
        for a, b in ((a, b) for i, a in enumerate(configs) for b in configs[i + 1:]):
            for x, y in ((a, b), (b, a)):
                c = crossover(m, "aggregate_tok_s", x, y)
                if c:
                    out.append(f"- {model}: {x['runtime']} {x['quant']} overtakes {y['runtime']} {y['quant']} "
                               f"at {c} users.")
            lo = ratio_at(m, "aggregate_tok_s", a, b, int(m["concurrency"].min()))
            hi = ratio_at(m, "aggregate_tok_s", a, b, int(m["concurrency"].max()))
            if lo and hi:
                out.append(f"- {model}: {a['runtime']} {a['quant']} vs {b['runtime']} {b['quant']}: "
                           f"×{lo:.2f} at {m['concurrency'].min()} user, ×{hi:.2f} at {m['concurrency'].max()} users.")
    return ("Each runtime at its fastest quant, total output tok/s:\n\n" + "\n".join(out)) if out else ""
