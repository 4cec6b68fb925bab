"""The decode batch over time, read from the client's clock alone.

A server that batches advances all its running streams in one step and writes each of them a
token at the end of it, so their chunks reach the client together; the next step's come one
step time later. From every streamed chunk's arrival (the chunks table), a run's arrivals are
cut into steps wherever two consecutive arrivals are further apart than STEP_SHARE of the
run's typical gap between one stream's tokens; a step's batch is the number of streams with a
token in it. A stream whose gap between two tokens exceeds STALL_FACTOR times its own median
gap stalled, typically behind another request's prompt (a prefill stall); when another
request's first token falls in that gap, the stall is charged to that prefill.

The estimate needs nothing from the server, so it covers a server that reports nothing (an
OpenAI-compatible endpoint of unknown make). Where a server does report its running requests
(llama.cpp's /slots, vLLM's num_requests_running), `agreement` sets each telemetry sample beside
the estimate at that instant: the streams the next step to arrive writes to. A server counts a
request running from its prefill on; the client sees a request prefilled when its first token
comes, so a request waiting in a queue is not counted, and one prefilled over several steps
(chunked) only in its last.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from gaplab.measure.records import TOKEN_KINDS
from gaplab.storage import store

STEP_SHARE = 0.3
STALL_FACTOR = 3.0
# the server's own count of running requests, by telemetry metric
SERVER_RUNNING = {"slots_processing": "llama.cpp /slots", "vllm:num_requests_running": "vLLM num_requests_running"}


def token_arrivals(raw_dir: Path, run_ids: list[str]) -> pl.DataFrame:
    """(run_id, request_index, arrival_ns) of every output chunk of the runs' measured requests."""
    return (store.scan_table(raw_dir, "chunks")
            .filter(pl.col("run_id").is_in(run_ids) & ~pl.col("warmup") & pl.col("kind").is_in(list(TOKEN_KINDS)))
            .select("run_id", "request_index", "arrival_ns").collect())


def _typical_gap(arrivals: pl.DataFrame) -> pl.DataFrame:
    """Per run: the median over its streams of each stream's median gap between tokens (ns)."""
    gaps = (arrivals.sort("run_id", "request_index", "arrival_ns")
            .with_columns(gap=pl.col("arrival_ns").diff().over("run_id", "request_index")))
    return (gaps.group_by("run_id", "request_index").agg(pl.col("gap").median())
            .group_by("run_id").agg(typical_gap_ns=pl.col("gap").median()))


def steps(arrivals: pl.DataFrame) -> pl.DataFrame:
    """One row per estimated step: run_id, step (its number in the run), t_ns (its first arrival),
    end_ns (its last) and batch (streams with a token in it)."""
    if arrivals.is_empty():
        return pl.DataFrame(schema={"run_id": pl.String, "step": pl.UInt32, "t_ns": pl.Int64, "end_ns": pl.Int64,
                                    "batch": pl.UInt32})
    cut = (arrivals.join(_typical_gap(arrivals), on="run_id").sort("run_id", "arrival_ns")
           .with_columns(new=(pl.col("arrival_ns").diff().over("run_id").fill_null(2**62)
                              > STEP_SHARE * pl.col("typical_gap_ns").fill_null(0)))
           .with_columns(step=pl.col("new").cum_sum().over("run_id")))
    return (cut.group_by("run_id", "step").agg(t_ns=pl.col("arrival_ns").min(), end_ns=pl.col("arrival_ns").max(),
                                               batch=pl.col("request_index").n_unique())
            .sort("run_id", "step"))


def estimate_at(run_steps: pl.DataFrame, t_ns: list[int], firsts: Sequence[tuple[int, int]] = ()) -> list[int]:
    """The streams running at each instant: those the step under way will write a token to,
    which is the next step to reach the client. A stream with tokens before that step runs
    however long the step takes (a contended server's steps stretch); one getting its first
    token in it runs once it was sent. Reading the last step that arrived instead would count
    streams that ended in it beside the requests sent to replace them. firsts: (sent_ns,
    first_token_ns) of the run's requests."""
    starts, ends, batches = (run_steps[c].to_list() for c in ("t_ns", "end_ns", "batch"))
    out = []
    for t in t_ns:
        k = bisect.bisect_right(starts, t)  # the first step to arrive after t
        if k == len(starts):
            out.append(0)
            continue
        new = [sent for sent, first in firsts if starts[k] <= first <= ends[k]]
        out.append(batches[k] - len(new) + sum(1 for sent in new if sent <= t))
    return out


def stalls(arrivals: pl.DataFrame, requests: pl.DataFrame) -> pl.DataFrame:
    """Per run: stalls (a stream's gap over STALL_FACTOR x its median gap), how many of them had
    another request's first token inside (prefill stalls), and the longest (ms).
    requests: run_id, request_index, first_token_ns of the same runs."""
    gaps = (arrivals.sort("run_id", "request_index", "arrival_ns")
            .with_columns(prev=pl.col("arrival_ns").shift().over("run_id", "request_index"))
            .with_columns(gap=pl.col("arrival_ns") - pl.col("prev"))
            .with_columns(median=pl.col("gap").median().over("run_id", "request_index"))
            .filter(pl.col("gap") > STALL_FACTOR * pl.col("median")))
    firsts = requests.select("run_id", pl.col("request_index").alias("other"), pl.col("first_token_ns"))
    hit = (gaps.join(firsts, on="run_id").filter((pl.col("other") != pl.col("request_index"))
                                                 & (pl.col("first_token_ns") > pl.col("prev"))
                                                 & (pl.col("first_token_ns") <= pl.col("arrival_ns")))
           .select("run_id", "request_index", "arrival_ns").unique())
    return (gaps.join(hit.with_columns(prefill=pl.lit(True)), on=["run_id", "request_index", "arrival_ns"], how="left")
            .group_by("run_id").agg(stalls=pl.len(), prefill_stalls=pl.col("prefill").sum(),
                                    longest_stall_ms=pl.col("gap").max() / 1e6))


def per_cell(raw_dir: Path, trials: pl.DataFrame) -> pl.DataFrame:
    """Per cell (trials: metrics.trial_summary rows): the mean estimated batch over its trials'
    steps, the largest, the steps, and the stalls (stalls), as runtime, model, quant, users, slots."""
    ids = trials["run_id"].to_list()
    arrivals = token_arrivals(raw_dir, ids)
    firsts = (store.scan_table(raw_dir, "requests").filter(pl.col("run_id").is_in(ids) & ~pl.col("warmup"))
              .select("run_id", "request_index", "first_token_ns").collect())
    runs = (steps(arrivals).group_by("run_id").agg(batch=pl.col("batch").mean(), max_batch=pl.col("batch").max(),
                                                  steps=pl.len())
            .join(stalls(arrivals, firsts), on="run_id", how="left"))
    return (trials.join(runs, on="run_id")
            .group_by("cell_key", "runtime", "model", "quant", "concurrency", "parallel", maintain_order=True)
            .agg(mean_batch=pl.col("batch").mean(), max_batch=pl.col("max_batch").max(), steps=pl.col("steps").sum(),
                 stalls=pl.col("stalls").fill_null(0).sum(), prefill_stalls=pl.col("prefill_stalls").fill_null(0).sum(),
                 longest_stall_ms=pl.col("longest_stall_ms").max())
            .sort("model", "runtime", "quant", "concurrency"))


def agreement(raw_dir: Path, run_ids: list[str]) -> pl.DataFrame:
    """Each telemetry sample of a server's running requests beside the estimate at that instant:
    run_id, runtime_kind, source (SERVER_RUNNING), t_ns, server, estimate."""
    tele = (store.scan_table(raw_dir, "telemetry")
            .filter(pl.col("run_id").is_in(run_ids) & pl.col("metric").is_in(list(SERVER_RUNNING)))
            .group_by("run_id", "runtime_kind", "metric", "t_ns").agg(server=pl.col("value").sum()).collect())
    if tele.is_empty():
        return pl.DataFrame()
    runs = tele["run_id"].unique().to_list()
    arrivals = token_arrivals(raw_dir, runs)
    all_steps = steps(arrivals)
    requests = (store.scan_table(raw_dir, "requests").filter(pl.col("run_id").is_in(runs) & ~pl.col("warmup")
                                                             & pl.col("first_token_ns").is_not_null())
                .select("run_id", "sent_ns", "first_token_ns").collect())
    # only the span the client measured: before its first and after its last token the server idles too
    spans = arrivals.group_by("run_id").agg(first=pl.col("arrival_ns").min(), last=pl.col("arrival_ns").max())
    tele = tele.join(spans, on="run_id").filter(pl.col("t_ns").is_between(pl.col("first"), pl.col("last")))
    parts = []
    for (run_id,), g in tele.group_by("run_id"):
        run_steps = all_steps.filter(pl.col("run_id") == run_id)
        firsts = list(requests.filter(pl.col("run_id") == run_id).select("sent_ns", "first_token_ns").iter_rows())
        est = estimate_at(run_steps, g["t_ns"].to_list(), firsts)
        parts.append(g.with_columns(estimate=pl.Series(est, dtype=pl.Float64)))
    if not parts:
        return pl.DataFrame()
    return (pl.concat(parts).with_columns(source=pl.col("metric").replace_strict(SERVER_RUNNING))
            .select("run_id", "runtime_kind", "source", "t_ns", "server", "estimate"))


def agreement_summary(samples: pl.DataFrame) -> pl.DataFrame:
    """Per source: samples, the server's mean running count, the estimate's, the mean absolute
    difference and the share of samples within one stream of the server's count."""
    if samples.is_empty():
        return pl.DataFrame()
    diff = (pl.col("estimate") - pl.col("server")).abs()
    return (samples.group_by("source").agg(samples=pl.len(), server_mean=pl.col("server").mean(),
                                           estimate_mean=pl.col("estimate").mean(), mean_abs_diff=diff.mean(),
                                           within_one=(diff <= 1).mean() * 100)
            .sort("source"))


def story(summary: pl.DataFrame) -> str:
    """How far the estimate is from what the servers report, in words (agreement_summary rows)."""
    if summary.is_empty():
        return ("No server here reported its running requests, so the estimate below stands alone: it is what "
                "the client's clock says, unchecked.")
    parts = [f"{r['source']}: {r['samples']} samples, the server's mean {r['server_mean']:.2f} running against "
             f"{r['estimate_mean']:.2f} estimated, {r['mean_abs_diff']:.2f} apart on average, {r['within_one']:.0f}% "
             f"of samples within one request" for r in summary.iter_rows(named=True)]
    return ("Set beside what the servers report at each telemetry sample while the client was measuring, "
            + "; ".join(parts) + ". A server's gauge is read between its steps: one that only updates it when a "
            "step ends (vLLM) still shows the last step's count through a long prefill, which the estimate already "
            "counts.")

