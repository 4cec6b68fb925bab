"""The metric definitions, in polars: per-request latencies and per-trial figures from the
raw rows. The sweep reads them to decide whether a cell needs another trial, and the
report to draw every figure.

The definitions are written once, for readers, on the methodology page (methodology.qmd,
"How time is taken"): TTFT, time to the first answer token, reasoning tokens, per-user decode
speed, aggregate throughput, inter-token latency; here they are code. Percentiles interpolate
linearly between ranks (numpy's default).

Every function takes a DataFrame or a LazyFrame (speed.scan_requests: the store scanned, not
read), so the sweep, the pages and the tests share one definition; trial_summary collects only
what it needs of a lazy frame.
"""

from __future__ import annotations

from typing import TypeVar

import polars as pl

NS_PER_MS = 1_000_000
CELL = ["machine_id", "hardware_id", "runtime", "runtime_kind", "model", "quant", "workload", "concurrency",
        "rate", "threads", "parallel", "cell_key"]
GROUP = CELL + ["series_id", "trial", "run_id"]
Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)  # what a function takes, it returns: lazy stays lazy


# The headline metrics: each cell gets the mean over its trials, a 95% interval and the sd.
METRICS = ["aggregate_tok_s", "per_user_tok_s", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "itl_mean_ms"]
HIGHER_IS_BETTER = {"aggregate_tok_s": True, "per_user_tok_s": True, "ttft_p50_ms": False, "ttft_p99_ms": False,
                    "e2e_p50_ms": False, "itl_mean_ms": False}


def number(value: object) -> float:
    """A number polars computed (a Series' max, mean, ...), which it types as any Python value
    since a column's type is known only when it runs; a null (empty column) or a non-number raises."""
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number from a numeric column, got {value!r}")
    return value


def with_run_keys(frame: Frame) -> Frame:
    """Rows of schema-1 files name no machine, series or trial: each was one trial, on a machine
    known only by its class."""
    return frame.with_columns(machine_id=pl.coalesce("machine_id", "hardware_id"),
                              series_id=pl.coalesce("series_id", "run_id"), trial=pl.coalesce("trial", pl.lit(1)))


SERIES_START = 16  # a series id begins with its sweep's start time (store.new_run_id), this many characters


def series_start(series_id: str) -> str:
    """The sweep start a series id carries: series that share it were measured in the same rounds."""
    return series_id[:SERIES_START]


def with_round(trials: pl.DataFrame) -> pl.DataFrame:
    """trial_summary rows with `round`: the sweep round each trial was measured in, as the store
    tells it. A sweep gives every cell it starts a series (series_id: the sweep's start time, then
    a random part) and one trial a round, so trial k of the cells whose series began together
    ran in round k. A sweep resumed after a kill can shift a cell by a round: such a pair shares
    less drift, which widens a paired interval but does not bias it. Rows without a series key
    their round by trial alone."""
    if "series_id" not in trials.columns:
        return trials.with_columns(round=pl.col("trial").cast(pl.String))
    return trials.with_columns(round=pl.concat_str(pl.col("series_id").str.slice(0, SERIES_START), pl.lit(":"),
                                                   pl.col("trial").cast(pl.String)))


STUDIES = ("matrix", "workloads")


def in_study(frame: Frame, study: str | None) -> Frame:
    """Rows of one study: the matrix pages show fixed-length workloads under closed-loop users
    (and runs from before workload kinds, whose kind is null); the workloads page shows every
    open-loop rate and every other workload kind. None keeps all."""
    if study is None:
        return frame
    matrix = pl.col("rate").is_null() & pl.col("workload_kind").fill_null("fixed").eq("fixed")
    return frame.filter(matrix if study == "matrix" else ~matrix)


def selected_runs(runs: Frame, study: str | None = "matrix") -> Frame:
    """The runs the report combines: per machine and cell, the complete trials of its newest
    series (a forced rerun starts a new series; a resumed sweep continues the last one), of
    one study (in_study)."""
    runs = in_study(with_run_keys(runs), study)
    newest = (runs.group_by("machine_id", "cell_key").agg(pl.col("series_id").sort_by("run_id").last()))
    return runs.join(newest, on=["machine_id", "cell_key", "series_id"], how="semi").filter(
        pl.col("status") == "complete")


def with_latencies(requests: Frame) -> Frame:
    span = pl.col("last_token_ns") - pl.col("first_token_ns")
    return requests.with_columns(
        ttft_ms=(pl.col("first_token_ns") - pl.col("sent_ns")) / NS_PER_MS,
        # a reasoning model's wait for its answer: equal to ttft_ms for any other model; null before schema 9
        ttft_answer_ms=(pl.col("first_answer_ns") - pl.col("sent_ns")) / NS_PER_MS,
        # the server's count where its usage splits reasoning out, else the client's reasoning chunks
        reasoning_tokens=pl.coalesce("server_reasoning_tokens", "reasoning_chunks"),
        answer_tokens=pl.col("completion_tokens") - pl.coalesce("server_reasoning_tokens", "reasoning_chunks"),
        e2e_ms=(pl.col("end_ns") - pl.col("sent_ns")) / NS_PER_MS,
        queue_ms=(pl.col("sent_ns") - pl.col("scheduled_ns")) / NS_PER_MS,
        # time per output token after the first (vLLM's TPOT), from the client's own stamps
        tpot_ms=pl.when(pl.col("completion_tokens") > 1)
        .then(span / (pl.col("completion_tokens") - 1) / NS_PER_MS).otherwise(None),
        max_gap_ms=pl.col("max_gap_ns") / NS_PER_MS,
        decode_tok_s=pl.when((pl.col("completion_tokens") > 1) & (span > 0))
        .then((pl.col("completion_tokens") - 1) / (span / 1e9)).otherwise(None),
        itl_ms=pl.when((pl.col("n_token_chunks") == pl.col("completion_tokens")) & (pl.col("n_token_chunks") > 1))
        .then(span / (pl.col("n_token_chunks") - 1) / NS_PER_MS).otherwise(None),
        ok=pl.col("error").is_null(),
    )


def error_kind(message: str) -> str:
    """The kind of a failed request stored before schema 11, guessed from its message (since then
    the client names the kind where the request failed: RequestRecord.fail)."""
    m = message.lower()
    for key, kind in (("token repeat limit", "Ollama's token repeat limit"), ("truncated", "truncated"),
                      ("reset", "connection reset"), ("no complete response", "timeout"),
                      ("malformed", "malformed stream"), ("cancelled", "cancelled"), ("refused", "refused"),
                      ("before its body was complete", "incomplete body"),
                      ("ignored the output length", "ignored output length"), ("cut at trial end", "cut at trial end"),
                      ("cut when the trial stopped", "cut when the trial stopped")):
        if key in m:
            return kind
    if m.startswith("http "):
        return message[:8]
    return "other"


def trial_summary(requests: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """One row per trial (run): throughput and latency of its measured requests. Requests that
    failed count in `errors` and in the span, never in the token or latency figures.

    Three passes, each collected before the next so only one holds memory: the counts and sums
    stream (polars keeps one running total per trial); the percentiles need every value of a
    trial, so only their columns are held, the run id as a categorical (4 bytes a row, not 16);
    the error messages come from the failed rows alone. In one group_by, the percentiles would
    make polars hold all 15 key columns of every row: 8 GB and 17 s for 10 M rows, against
    about 1.2 GB and 5 s here (bench/store_scale.py)."""
    lazy, ok = requests.lazy(), pl.col("ok")
    # grouped by run_id alone: every row of a run carries the run's identity, so the other keys
    # are its first row's (hashing 15 keys a row took the streaming pass 50% longer)
    sums = lazy.group_by("run_id").agg(
        *[pl.col(k).first() for k in GROUP if k != "run_id"],
        requests=pl.len(),
        errors=(~ok).sum(),
        output_tokens=pl.col("completion_tokens").filter(ok).sum(),
        span_s=(pl.col("end_ns").max() - pl.col("sent_ns").min()) / 1e9,
        itl_mean_ms=pl.col("itl_ms").filter(ok).mean(),
        server_decode_tok_s=(pl.col("server_predicted_n").filter(ok).sum()
                             / (pl.col("server_predicted_ms").filter(ok).sum() / 1e3)),
    ).collect()
    values = lazy.select(pl.col("run_id").cast(pl.Categorical), "ok", "ttft_ms", "e2e_ms", "decode_tok_s",
                         "queue_ms").collect()
    ranks = values.group_by("run_id").agg(
        ttft_p50_ms=pl.col("ttft_ms").filter(ok).quantile(0.5, interpolation="linear"),
        ttft_p99_ms=pl.col("ttft_ms").filter(ok).quantile(0.99, interpolation="linear"),
        e2e_p50_ms=pl.col("e2e_ms").filter(ok).quantile(0.5, interpolation="linear"),
        per_user_tok_s=pl.col("decode_tok_s").filter(ok).median(),
        queue_p99_ms=pl.col("queue_ms").quantile(0.99, interpolation="linear"),
    ).with_columns(pl.col("run_id").cast(pl.String))
    del values
    guessed = pl.col("error").map_elements(error_kind, return_dtype=pl.String)
    kind = pl.coalesce(pl.col("error_kind"), guessed) if "error_kind" in lazy.collect_schema() else guessed
    messages = lazy.filter(~ok & pl.col("error").is_not_null()).group_by("run_id").agg(
        error_messages=pl.col("error"), error_kinds=kind).collect()
    return (sums.join(ranks, on="run_id", how="left").join(messages, on="run_id", how="left").with_columns(
        error_messages=pl.col("error_messages").fill_null([]), error_kinds=pl.col("error_kinds").fill_null([]),
        aggregate_tok_s=pl.col("output_tokens") / pl.col("span_s"),
        config=pl.col("runtime") + " · " + pl.col("quant"),
    ).select(*GROUP, "requests", "errors", "error_messages", "error_kinds", "output_tokens", "span_s", "ttft_p50_ms", "ttft_p99_ms",
             "e2e_p50_ms", "per_user_tok_s", "itl_mean_ms", "queue_p99_ms", "server_decode_tok_s", "aggregate_tok_s",
             "config").sort(["model", "runtime", "quant", "concurrency", "trial"]))
