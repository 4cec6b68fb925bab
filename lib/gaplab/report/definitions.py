"""Whose definition: the headline metrics under the conventions other tools use, computed from
the same raw rows, so a published figure can be read against ours.

Published latencies disagree partly by definition. DEFINITIONS lists, as data, each
convention with the tool it comes from and whether this report's figures use it; the
frames below recompute every convention per request from the stored request rows and
chunk arrival times, and say per cell how far each moves a figure from ours.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gaplab.storage import store

# metric, convention, who uses it, used by this report's figures
DEFINITIONS = [
    ("TTFT", "first_text", "first chunk that carries output text, minus the send (this report)", True),
    ("TTFT", "first_chunk", "first streamed chunk of any kind, minus the send: a role-only chunk counts "
                            "(vLLM's benchmark client)", False),
    ("TTFT", "from_scheduled", "first text chunk minus the time the request was due, queueing in the client "
                               "included (MLPerf's server scenario)", False),
    ("TPOT", "excl_first", "(E2E - TTFT) / (output tokens - 1): the first token left out (vLLM's "
                           "benchmark, MLPerf; this report's per-user decode speed is its inverse)", True),
    ("TPOT", "incl_first", "E2E / output tokens: the first token's wait included (GuideLLM)", False),
    ("ITL", "per_token", "(last token - first token) / (tokens - 1), only where each chunk holds one "
                         "token (this report)", True),
    ("ITL", "per_chunk", "(last chunk - first chunk) / (chunks - 1), every chunk counted as a token "
                         "(clients that count chunks)", False),
    ("E2E", "from_send", "end of the response minus the send (this report)", True),
    ("E2E", "from_scheduled", "end of the response minus the time it was due (MLPerf)", False),
]


def definitions() -> pl.DataFrame:
    return pl.DataFrame(DEFINITIONS, schema=["metric", "convention", "definition", "used here"], orient="row")


def per_request(requests: pl.DataFrame, raw_dir: Path) -> pl.DataFrame:
    """The successful measured requests (metrics.with_latencies rows) with every convention's value, in ms."""
    ok = requests.filter(pl.col("ok"))
    chunks = (store.scan_table(raw_dir, "chunks")
              .filter(pl.col("run_id").is_in(ok["run_id"].unique().to_list()) & ~pl.col("warmup"))
              .group_by("run_id", "request_index")
              .agg(first_chunk_ns=pl.col("arrival_ns").min(), last_chunk_ns=pl.col("arrival_ns").max(),
                   chunks=pl.len())
              .collect())
    ms = 1e6
    tokens = pl.col("completion_tokens").cast(pl.Float64)
    return ok.join(chunks, on=["run_id", "request_index"], how="left").with_columns(
        ttft_first_text=pl.col("ttft_ms"),
        ttft_first_chunk=(pl.col("first_chunk_ns") - pl.col("sent_ns")) / ms,
        ttft_from_scheduled=(pl.col("first_token_ns") - pl.col("scheduled_ns")) / ms,
        tpot_excl_first=(pl.col("e2e_ms") - pl.col("ttft_ms")) / (tokens - 1),
        tpot_incl_first=pl.col("e2e_ms") / tokens,
        itl_per_token=pl.col("itl_ms"),
        itl_per_chunk=(pl.col("last_chunk_ns") - pl.col("first_chunk_ns")) / ms / (pl.col("chunks") - 1),
        e2e_from_send=pl.col("e2e_ms"),
        e2e_from_scheduled=(pl.col("end_ns") - pl.col("scheduled_ns")) / ms)


def shifts(per_req: pl.DataFrame) -> pl.DataFrame:
    """Per runtime, metric and convention: the median over its cells of (the cell's median under
    that convention) / (its median under this report's), with the range over cells."""
    if per_req.is_empty():
        return pl.DataFrame()
    cols = {f"{m.lower()}_{c}": (m, c) for m, c, _, _ in DEFINITIONS}
    ours = {m: f"{m.lower()}_{c}" for m, c, _, used in DEFINITIONS if used}
    cells = per_req.group_by("runtime", "quant", "model", "concurrency").agg(pl.col(list(cols)).median())
    rows = []
    for col, (metric, conv) in cols.items():
        ratio = cells.with_columns(r=pl.col(col) / pl.col(ours[metric])).group_by("runtime").agg(
            median_ms=pl.col(col).median(), ratio=pl.col("r").median(), lo=pl.col("r").min(), hi=pl.col("r").max())
        rows += [{"runtime": r["runtime"], "metric": metric, "convention": conv, **{k: r[k] for k in
                                                                                  ("median_ms", "ratio", "lo", "hi")}}
                 for r in ratio.iter_rows(named=True)]
    return pl.DataFrame(rows).sort("metric", "runtime", "convention")
