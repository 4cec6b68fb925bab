"""How close each cell's decode comes to what the machine's memory bandwidth allows.

A decode step reads every weight once, for all the sequences it advances together, and
each sequence's K and V cache. With a batch of B sequences at a context of T tokens, a
step moves W + B x K x T bytes (W: weight bytes, K: K and V bytes per token of context)
and yields B tokens, so memory bandwidth M bounds the output at

    bound tok/s = B x M / (W + B x K x T).

B is the sequences a step can hold: the users, up to the server's slots (llama.cpp's -np,
vLLM's max-num-seqs). T is the prompt plus half the output (the mean context over the
decode). M is the machine's one-thread triad figure for a server run with one thread,
its all-threads figure otherwise (bandwidth.py). The measured side is the per-user decode
speed times B, with the interval of the per-user figure. Compute, not memory, can bind
first (small models, long prompts, CPUs without wide vector units): a low percentage says
the step is not memory-bound, or that the runtime's kernels leave bandwidth unused.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gaplab import store


def bandwidth(raw_dir: Path, machine_id: str) -> pl.DataFrame:
    """The machine's newest bandwidth measurement: one row per repeat and thread count."""
    bw = store.read_table(raw_dir, "bandwidth").filter(pl.col("machine_id") == machine_id)
    if bw.is_empty():
        return bw
    return bw.filter(pl.col("run_id") == bw["run_id"].max()).sort("threads_used", "repeat")


def traffic(raw_dir: Path, machine_id: str) -> pl.DataFrame:
    """Per cell: the bytes a decode step reads (weights, K and V per token) and the server's
    threads and slots, from its runs (schema 5 and later)."""
    runs = store.read_table(raw_dir, "run").filter((pl.col("machine_id") == machine_id)
                                                   & pl.col("weight_bytes").is_not_null())
    return runs.group_by("cell_key").agg(pl.col("weight_bytes", "kv_bytes_per_token", "threads", "parallel").last())


def roofline(estimates: pl.DataFrame, requests: pl.DataFrame, raw_dir: Path, machine_id: str) -> pl.DataFrame:
    """One row per cell (speed.estimates) with the inputs of the bound, the bound and the measured
    decode tok/s, and the percentage with its interval; cells without stored traffic are left out."""
    bw = bandwidth(raw_dir, machine_id)
    cells = traffic(raw_dir, machine_id)
    if bw.is_empty() or cells.is_empty() or estimates.is_empty():
        return pl.DataFrame()
    one = float(bw.filter(pl.col("threads_used") == 1)["gb_s"].mean())
    every = float(bw.filter(pl.col("threads_used") == bw["threads_used"].max())["gb_s"].mean())
    context = requests.filter(pl.col("ok")).group_by("cell_key").agg(
        context=pl.col("prompt_tokens").mean() + pl.col("completion_tokens").mean() / 2)
    batch = pl.min_horizontal("concurrency", pl.col("parallel").fill_null(pl.col("concurrency")))
    gb_s = pl.when(pl.col("threads") == 1).then(pl.lit(one)).otherwise(pl.lit(every))
    step = pl.col("weight_bytes") + pl.col("batch") * pl.col("kv_bytes_per_token").fill_null(0) * pl.col("context")
    return (estimates.drop("threads", "parallel").join(cells, on="cell_key").join(context, on="cell_key")
            .with_columns(batch=batch, gb_s=gb_s)
            .with_columns(bound_tok_s=pl.col("batch") * pl.col("gb_s") * 1e9 / step,
                          decode_tok_s=pl.col("per_user_tok_s") * pl.col("batch"),
                          decode_lo=pl.col("per_user_tok_s_lo") * pl.col("batch"),
                          decode_hi=pl.col("per_user_tok_s_hi") * pl.col("batch"))
            .with_columns(pct=pl.col("decode_tok_s") / pl.col("bound_tok_s") * 100,
                          pct_lo=pl.col("decode_lo") / pl.col("bound_tok_s") * 100,
                          pct_hi=pl.col("decode_hi") / pl.col("bound_tok_s") * 100,
                          pct_sd=pl.col("per_user_tok_s_sd") * pl.col("batch") / pl.col("bound_tok_s") * 100,
                          weight_mb=pl.col("weight_bytes") / 1e6, kv_kb_per_token=pl.col("kv_bytes_per_token") / 1e3)
            .sort("model", "runtime", "quant", "concurrency"))
