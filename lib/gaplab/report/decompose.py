"""Where the time goes: each request's latency split into parts from the client's timestamps
and the server's own figures, and the difference between two configurations split the same way.

Parts (ms), in the order a request lives through them; they add up to its latency from the
moment it was scheduled to the end of its response:
- client_queue   sent - scheduled, inside the client
- server_queue   waiting for a slot or a batch before the prompt is processed
- prompt         prompt processing (prefill)
- ttft_other     the rest of the time to the first token (API front end, transport)
- first_decode   one decode step (the trial's mean step)
- decode_rest    the other decode steps
- tail           from the last token to the end of the response, plus any disagreement
                 between the client's first-to-last-token span and the server's decode time
TTFT is server_queue + prompt + ttft_other. How each part is obtained depends on what the
engine behind the server reports (SOURCES), whatever the runtime's kind: a server attached by
URL is read as the engine it was identified as (runtimes.identify; the run's `engine`).
llama.cpp and Ollama time every request themselves; vLLM and SGLang do not, so their parts
are per-trial means from the deltas of their Prometheus histograms and counters over the trial
(SERVER_METRICS, one table for both); a server that reports nothing gets the client's parts only.

The parts are columns of these frames, computed from the stored rows at read time, so a
better derivation never needs the data rewritten.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import polars as pl

from gaplab.analysis import stats
from gaplab.analysis.metrics import GROUP, number
from gaplab.storage import store

PARTS = ["client_queue", "server_queue", "prompt", "ttft_other", "first_decode", "decode_rest", "tail"]
TTFT_PARTS = ["server_queue", "prompt", "ttft_other"]
LABELS = {"client_queue": "client queue", "server_queue": "server queue", "prompt": "prompt processing",
          "ttft_other": "front end + transport", "first_decode": "first decode step",
          "decode_rest": "remaining decode", "tail": "after the last token"}

_PER_REQUEST = {
    "client_queue": "measured (client)",
    "server_queue": "inferred: TTFT - prompt (slot wait, plus transport of the first token)",
    "prompt": "measured (server, per request)",
    "ttft_other": "folded into server queue",
    "first_decode": "inferred: decode time / (tokens - 1)",
    "decode_rest": "measured (server, per request) - first step",
    "tail": "measured (client): E2E - TTFT - server decode time",
}
SOURCES = {
    "llamacpp": _PER_REQUEST,  # timings.prompt_ms, timings.predicted_ms of every response
    "ollama": _PER_REQUEST,  # prompt_eval_duration, eval_duration (load_duration falls in server queue)
    "vllm": {
        "client_queue": "measured (client)",
        "server_queue": "measured (server histogram, trial mean: request_queue_time)",
        "prompt": "measured (server histogram, trial mean: request_prefill_time)",
        "ttft_other": "inferred: client TTFT - queue - prefill (API server, transport)",
        "first_decode": "inferred: decode time / (tokens - 1)",
        "decode_rest": "measured (server histogram, trial mean: request_decode_time) - first step",
        "tail": "measured (client): E2E - TTFT - server decode time",
    },
    "sglang": {
        "client_queue": "measured (client)",
        "server_queue": "measured (server histogram, trial mean: queue_time)",
        "prompt": "inferred: server TTFT - queue (histogram trial means: time_to_first_token, queue_time)",
        "ttft_other": "inferred: client TTFT - server TTFT (transport)",
        "first_decode": "inferred: decode time / (tokens - 1)",
        "decode_rest": "inferred: server E2E - server TTFT (histogram trial means) - first step",
        "tail": "measured (client): E2E - TTFT - server decode time",
    },
}
CLIENT_ONLY = {"client_queue": "measured (client)", "server_queue": "not reported", "prompt": "not reported",
               "ttft_other": "measured (client): all of TTFT", "first_decode": "inferred: span / (tokens - 1)",
               "decode_rest": "measured (client): first-to-last token span - first step",
               "tail": "measured (client): E2E - TTFT - span"}

# Per engine that times requests only in aggregate: the Prometheus samples whose change over a
# trial gives its parts. Histograms by name (their _sum and _count samples are read), counters by
# their sample's name; then how the per-request means (seconds, tokens) make the server's queue,
# prompt and decode time (ms) and tokens per request, and the share of prompt tokens its prefix
# cache served (a counter the server does not expose leaves that share null, the parts stand).
class ServerMetrics(TypedDict):
    histograms: dict[str, str]  # mean's name -> histogram
    counters: dict[str, str]  # change's name -> counter
    parts: Callable[[dict[str, pl.Series]], dict[str, pl.Series]]  # those per run -> the parts (srv_ columns)


SERVER_METRICS: dict[str, ServerMetrics] = {
    "vllm": {
        "histograms": {"queue": "vllm:request_queue_time_seconds", "prefill": "vllm:request_prefill_time_seconds",
                       "decode": "vllm:request_decode_time_seconds", "tokens": "vllm:request_generation_tokens"},
        "counters": {"prefix_queries": "vllm:prefix_cache_queries_total", "prefix_hits": "vllm:prefix_cache_hits_total"},
        "parts": lambda m: {"server_queue": m["queue"] * 1e3, "prompt": m["prefill"] * 1e3,
                            "decode": m["decode"] * 1e3, "tokens": m["tokens"], "requests": m["decode_count"],
                            "prefix_hit_pct": m["prefix_hits"] / m["prefix_queries"] * 100},  # in tokens
    },
    "sglang": {
        "histograms": {"queue": "sglang:queue_time_seconds", "ttft": "sglang:time_to_first_token_seconds",
                       "e2e": "sglang:e2e_request_latency_seconds"},
        "counters": {"generated": "sglang:generation_tokens_total", "requests": "sglang:num_requests_total",
                     "prompt_tokens": "sglang:prompt_tokens_total", "cached_tokens": "sglang:cached_tokens_total"},
        "parts": lambda m: {"server_queue": m["queue"] * 1e3, "prompt": (m["ttft"] - m["queue"]) * 1e3,
                            "decode": (m["e2e"] - m["ttft"]) * 1e3, "tokens": m["generated"] / m["requests"],
                            "requests": m["e2e_count"],
                            "prefix_hit_pct": m["cached_tokens"] / m["prompt_tokens"] * 100},  # cached of all
    },
}


def engines(raw_dir: Path, run_ids: list[str]) -> pl.DataFrame:
    """run_id -> engine: the one the run recorded (schema 10), else its kind where the kind is one."""
    from gaplab.runtimes.identify import NAMES

    runs = store.read_table(raw_dir, "run").filter(pl.col("run_id").is_in(run_ids))
    recorded = pl.col("engine") if "engine" in runs.columns else pl.lit(None, pl.String)
    kind = pl.when(pl.col("runtime_kind").is_in(list(NAMES))).then(pl.col("runtime_kind"))
    return runs.select("run_id", engine=pl.coalesce(recorded, kind)).unique("run_id")


def request_parts(requests: pl.DataFrame) -> pl.DataFrame:
    """The successful requests (metrics.with_latencies rows) with a column per part, `latency`
    (scheduled to end, ms) and `timed_by` ("server" where the response carried the server's own
    prompt and decode times, else "client")."""
    ok = requests.filter(pl.col("ok"))
    served = pl.col("server_prompt_ms").is_not_null() & pl.col("server_predicted_ms").is_not_null()
    span = (pl.col("last_token_ns") - pl.col("first_token_ns")) / 1e6
    decode = pl.when(served).then(pl.col("server_predicted_ms")).otherwise(span)
    tokens = pl.when(served).then(pl.col("server_predicted_n")).otherwise(pl.col("completion_tokens"))
    first = decode / (tokens.cast(pl.Float64) - 1).clip(lower_bound=1)
    queue = pl.when(served).then((pl.col("ttft_ms") - pl.col("server_prompt_ms")).clip(lower_bound=0))
    prompt = pl.when(served).then(pl.col("server_prompt_ms"))
    return ok.with_columns(
        client_queue=pl.col("queue_ms"), server_queue=queue, prompt=prompt,
        ttft_other=pl.col("ttft_ms") - queue.fill_null(0) - prompt.fill_null(0),
        first_decode=first, decode_rest=decode - first, tail=pl.col("e2e_ms") - pl.col("ttft_ms") - decode,
        latency=pl.col("queue_ms") + pl.col("e2e_ms"), timed_by=pl.when(served).then(pl.lit("server"))
        .otherwise(pl.lit("client")))


def server_means(raw_dir: Path, run_ids: list[str], engine: str) -> pl.DataFrame:
    """Per run of that engine (SERVER_METRICS): its mean queue, prompt and decode time per request
    (srv_server_queue, srv_prompt, srv_decode, ms), generated tokens per request (srv_tokens),
    the requests counted (srv_requests) and the prompt tokens its prefix cache served
    (srv_prefix_hit_pct, null where not reported), from the change of its histograms' _sum and _count and of
    its counters from the first sample after the warmup requests ended (they are not measured) to
    the last."""
    table = SERVER_METRICS[engine]
    names = [f"{h}_{end}" for h in table["histograms"].values() for end in ("sum", "count")]
    names += list(table["counters"].values())
    warmup = (store.scan_table(raw_dir, "requests").filter(pl.col("run_id").is_in(run_ids) & pl.col("warmup"))
              .group_by("run_id").agg(warmup_end_ns=pl.col("end_ns").max()))
    tele = (store.scan_table(raw_dir, "telemetry")
            .filter(pl.col("run_id").is_in(run_ids) & pl.col("metric").is_in(names))
            .join(warmup, on="run_id", how="left")
            .filter(pl.col("warmup_end_ns").is_null() | (pl.col("t_ns") >= pl.col("warmup_end_ns")))
            .group_by("run_id", "metric", "t_ns").agg(pl.col("value").sum())  # summed over label sets
            .sort("t_ns").group_by("run_id", "metric").agg(delta=pl.col("value").last() - pl.col("value").first())
            .collect())
    empty = pl.DataFrame(schema={"run_id": pl.String})
    if tele.is_empty():
        return empty
    wide = tele.pivot(on="metric", index="run_id", values="delta")
    means = {}
    for key, h in table["histograms"].items():
        if f"{h}_sum" not in wide.columns or f"{h}_count" not in wide.columns:
            return empty  # a histogram the server does not expose: no server-side parts
        means[key] = wide[f"{h}_sum"] / wide[f"{h}_count"]
        means[f"{key}_count"] = wide[f"{h}_count"]
    for key, c in table["counters"].items():
        means[key] = wide[c] if c in wide.columns else pl.Series([None] * wide.height, dtype=pl.Float64)
    out = wide.select("run_id").with_columns(**{f"srv_{k}": v for k, v in table["parts"](means).items()})
    needed = ["srv_server_queue", "srv_prompt", "srv_decode", "srv_tokens", "srv_requests"]
    return out.filter(pl.all_horizontal(pl.col(c).is_finite() for c in needed))


def trial_parts(requests: pl.DataFrame, raw_dir: Path) -> pl.DataFrame:
    """One row per trial: the mean of each part over its successful requests, its mean TTFT, E2E
    and latency, `timed_by` and `engine` (runtimes.identify.NAMES, null where unknown). Trials of
    an engine in SERVER_METRICS take their server-side parts from its histograms."""
    rp = request_parts(requests)
    trials = rp.group_by(GROUP).agg(
        *[pl.col(p).mean() for p in PARTS], ttft=pl.col("ttft_ms").mean(), e2e=pl.col("e2e_ms").mean(),
        latency=pl.col("latency").mean(), n=pl.len(), timed_by=pl.col("timed_by").mode().first(),
        config=(pl.col("runtime") + " · " + pl.col("quant")).first())
    trials = trials.join(engines(raw_dir, trials["run_id"].to_list()), on="run_id", how="left")
    hist = [server_means(raw_dir, g["run_id"].to_list(), engine)
            for (engine,), g in trials.group_by("engine") if engine in SERVER_METRICS]
    hist = [h for h in hist if "srv_decode" in h.columns]
    if not hist:
        return trials.sort(GROUP)
    v = trials.join(pl.concat(hist, how="diagonal_relaxed"), on="run_id", how="inner")
    first = v["srv_decode"] / (v["srv_tokens"] - 1).clip(lower_bound=1)
    v = v.with_columns(server_queue=v["srv_server_queue"], prompt=v["srv_prompt"],
                       ttft_other=v["ttft"] - v["srv_server_queue"] - v["srv_prompt"], first_decode=first,
                       decode_rest=v["srv_decode"] - first, tail=v["e2e"] - v["ttft"] - v["srv_decode"],
                       timed_by=pl.lit("server (trial histograms)")).select(trials.columns)
    return pl.concat([trials.join(v.select("run_id"), on="run_id", how="anti"), v]).sort(GROUP)


def sources(engines: list[str | None]) -> pl.DataFrame:
    """Per engine (trial_parts' `engine`; None: not identified) and part: measured directly (by
    whom) or inferred (from what)."""
    from gaplab.runtimes.identify import NAMES

    # None (not identified) is a key of neither table
    rows = [{"engine": NAMES.get(e or "", "unidentified server"),
             **{LABELS[p]: SOURCES.get(e or "", CLIENT_ONLY)[p] for p in PARTS}} for e in engines]
    return pl.DataFrame(rows).transpose(include_header=True, header_name="part",
                                        column_names="engine") if rows else pl.DataFrame()


def check(requests: pl.DataFrame) -> dict:
    """For requests the server timed: how far the server's decode time is from the client's
    first-to-last-token span, and how much of the latency the tail (the remainder) holds;
    medians over requests, in %."""
    rp = request_parts(requests).filter(pl.col("timed_by") == "server")
    if rp.is_empty():
        return {}
    span = (rp["last_token_ns"] - rp["first_token_ns"]) / 1e6
    decode = rp["first_decode"] + rp["decode_rest"]
    return {"requests": rp.height,
            "decode_vs_span_pct": float(number(((decode - span).abs() / span * 100).median())),
            "tail_pct": float(number((rp["tail"].abs() / rp["latency"] * 100).median())),
            "prompt_in_ttft_pct": float(number((rp["prompt"] / rp["ttft_ms"] * 100).median()))}


def waterfall(trials: pl.DataFrame, model: str, workload: str, users: int, a: str, b: str,
              metric: str = "ttft") -> pl.DataFrame:
    """How configuration b's mean TTFT ("ttft") or latency ("latency") differs from a's, part by
    part: one row for a's total, one per part (b's mean minus a's, with its Welch 95% interval
    over trials), one for b's total; `start` and `end` place each bar."""
    parts = TTFT_PARTS if metric == "ttft" else PARTS
    sel = trials.filter((pl.col("model") == model) & (pl.col("workload") == workload)
                        & (pl.col("concurrency") == users))
    ta, tb = sel.filter(pl.col("config") == a), sel.filter(pl.col("config") == b)
    if ta.is_empty() or tb.is_empty():
        return pl.DataFrame()
    total_a, total_b = float(number(ta[metric].mean())), float(number(tb[metric].mean()))
    rows = [{"step": f"{a}", "kind": "total", "start": 0.0, "end": total_a, "delta": total_a, "lo": None,
             "hi": None, "order": 0}]
    level = total_a
    for k, p in enumerate(parts, 1):
        iv = stats.difference_interval(ta[p].fill_null(0).to_list(), tb[p].fill_null(0).to_list())
        d = iv.estimate if iv else 0.0
        rows.append({"step": LABELS[p], "kind": "part", "start": level, "end": level + d, "delta": d,
                     "lo": iv.lo if iv else None, "hi": iv.hi if iv else None, "order": k})
        level += d
    total_iv = stats.difference_interval(ta[metric].to_list(), tb[metric].to_list())
    rows.append({"step": f"{b}", "kind": "total", "start": 0.0, "end": total_b, "delta": total_b - total_a,
                 "lo": total_iv.lo if total_iv else None, "hi": total_iv.hi if total_iv else None,
                 "order": len(parts) + 1})
    frame = pl.DataFrame(rows, schema_overrides={"lo": pl.Float64, "hi": pl.Float64})
    base = pl.when(pl.col("kind") == "part").then(pl.col("start")).otherwise(pl.lit(total_a))
    return frame.with_columns(err_lo=base + pl.col("lo"), err_hi=base + pl.col("hi"),
                              pair=pl.lit(f"{a} → {b} · {model} · {users} users"),
                              metric=pl.lit("TTFT" if metric == "ttft" else "latency"))


def pairs(claims: pl.DataFrame) -> list[dict]:
    """The comparisons to take apart: the claims table's 'faster' rows with a direction at the
    most users, TTFT rows for the TTFT waterfall and throughput rows for the latency one (in a
    closed loop, throughput at N users is N x tokens / latency); for each two runtimes (vLLM
    against llama.cpp, 8 slots against 1, ...) the quant pair with the largest gap."""
    out = []
    for metric, part_metric in (("ttft_p50_ms", "ttft"), ("aggregate_tok_s", "latency")):
        rows = claims.filter((pl.col("kind") == "faster") & (pl.col("metric") == metric)
                             & pl.col("verdict").is_in(["A better", "B better"]))
        if rows.is_empty():
            continue
        rows = (rows.filter(pl.col("users") == rows["users"].max())
                .with_columns(gap=pl.col("ratio").log().abs(),
                              runtimes=pl.concat_list(pl.col("a").str.split(" · ").list.first(),
                                                      pl.col("b").str.split(" · ").list.first()).list.sort())
                .filter(pl.col("runtimes").list.first() != pl.col("runtimes").list.last()))
        top = rows.sort("gap", descending=True).group_by("runtimes", maintain_order=True).first()
        out += [{"model": r["model"], "workload": r["workload"], "users": r["users"], "a": r["a"], "b": r["b"],
                 "metric": part_metric} for r in top.sort(["across_kinds", "gap"], descending=True).iter_rows(named=True)]
    return out
