"""How close each cell's decode comes to what the machine's memory bandwidth allows.

A decode step reads every weight once, for all the sequences it advances together, and
each sequence's K and V cache. With a batch of B sequences at a context of T tokens, a
step moves W + B x K x T bytes (W: weight bytes, K: K and V bytes per token of context)
and yields B tokens, so memory bandwidth M bounds the output at

    bound tok/s = B x M / (W + B x K x T).

W and K are what each run stored: read from the model file for a server gaplab starts, and
for one it attaches to from what the server's API says, else from the file the runtime's
model_config names (runtimes.identify); a run with neither is left out.

B is the sequences a step can hold: the users, up to the server's slots (llama.cpp's -np,
vLLM's max-num-seqs). T is the prompt plus half the output (the mean context over the
decode). M comes from the machine's newest bandwidth run (bandwidth.py): the CPU triad (the
one-thread figure for a server run with one thread, the all-threads figure otherwise) for
the servers gaplab starts (its llama.cpp build and vLLM's CPU build) and on a machine
without a GPU figure; the first GPU's figure (runs do not record which GPU served) for a
server attached by URL; and for a model the runtime reports split between GPU and CPU
memory (Ollama's placement), each share read at its own bandwidth: M = 1 / (g / M_gpu +
(1 - g) / M_cpu) with g the GPU's share. Only Ollama reports placement; another attached
server counts as wholly on the GPU. Column bandwidth_source names the figure each cell used.
The measured side is the per-user decode speed times B, with the interval of the per-user
figure. Compute, not memory, can
bind first (small models, long prompts, CPUs without wide vector units): a low percentage
says the step is not memory-bound, or that the runtime's kernels leave bandwidth unused.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gaplab.analysis.metrics import number
from gaplab.runtimes import kinds
from gaplab.storage import store


def _of_machine(raw_dir: Path, machine_id: str) -> pl.DataFrame:
    # files before schema 6 have no device column, and measured the CPU only
    return (store.read_table(raw_dir, "bandwidth").filter(pl.col("machine_id") == machine_id)
            .with_columns(pl.col("device").fill_null("cpu")))


def bandwidth(raw_dir: Path, machine_id: str) -> pl.DataFrame:
    """The machine's newest bandwidth measurement: one row per device, repeat and thread count
    (device "cpu", or "gpu:<index> <name>" with threads_used 0)."""
    bw = _of_machine(raw_dir, machine_id)
    if bw.is_empty():
        return bw
    return bw.filter(pl.col("run_id") == bw["run_id"].max()).sort("device", "threads_used", "repeat")


def bandwidth_runs(raw_dir: Path, machine_id: str) -> pl.DataFrame:
    """Every bandwidth run of the machine, oldest first: one row per run, device and thread count,
    with each repeat's GB/s, so runs can be compared."""
    bw = _of_machine(raw_dir, machine_id)
    return (bw.group_by("run_id", "device", "threads_used")
            .agg(pl.col("measured_at").first(), pl.col("method").first(), pl.col("gb_s").sort_by("repeat"))
            .sort("run_id", "device", "threads_used"))


def traffic(raw_dir: Path, machine_id: str) -> pl.DataFrame:
    """Per cell: the bytes a decode step reads (weights, K and V per token), the server's threads
    and slots, and where the model sat, from its runs (schema 5 and later)."""
    runs = store.read_table(raw_dir, "run").filter((pl.col("machine_id") == machine_id)
                                                   & pl.col("weight_bytes").is_not_null())
    return runs.group_by("cell_key").agg(pl.col("weight_bytes", "kv_bytes_per_token", "threads", "parallel",
                                                "model_bytes_loaded", "model_bytes_gpu").last())


def figure_name(device: str, threads_used: int) -> str:
    """How bandwidth_source names a figure: "cpu 1 thread", "cpu 2 threads", or the GPU's device."""
    return f"cpu {threads_used} thread{'s' if threads_used > 1 else ''}" if device == "cpu" else device


def roofline(estimates: pl.DataFrame, requests: pl.DataFrame, raw_dir: Path, machine_id: str,
             batches: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per cell (speed.estimates) with the inputs of the bound (bandwidth_source: the figure
    used), the bound and the measured decode tok/s, and the percentage with its interval; cells
    without stored traffic are left out. The batch is the users, or the slots where fewer; for a
    server whose slots are unknown (attached), the mean batch read from the client's clock
    (batches: report.batch.per_cell), else the users."""
    bw = bandwidth(raw_dir, machine_id)
    cells = traffic(raw_dir, machine_id)
    if bw.is_empty() or cells.is_empty() or estimates.is_empty():
        return pl.DataFrame()
    cpu = bw.filter(pl.col("device") == "cpu")
    most = cpu["threads_used"].max()
    one = cpu.filter(pl.col("threads_used") == 1)["gb_s"].mean()
    every = cpu.filter(pl.col("threads_used") == most)["gb_s"].mean()
    gpus = bw.filter(pl.col("device") != "cpu").sort(pl.col("device").str.extract(r"gpu:(\d+)").cast(pl.Int64))
    # without a GPU figure every cell's GPU share is 0, so the placeholder 1.0 is never read
    gpu_gb_s, gpu_name = (gpus["gb_s"][0], gpus["device"][0]) if not gpus.is_empty() else (1.0, None)
    cpu_gb_s = pl.when(pl.col("threads") == 1).then(pl.lit(one, pl.Float64)).otherwise(pl.lit(every, pl.Float64))
    cpu_name = (pl.when(pl.col("threads") == 1).then(pl.lit(figure_name("cpu", 1)))
                .otherwise(pl.lit(figure_name("cpu", int(number(most))) if most is not None else None, pl.String)))
    # the share of the model in GPU memory: none for the CPU builds gaplab starts, what the runtime
    # says where it says (Ollama), else all of it
    here = [name for name, kind in kinds().items() if kind.starts and not kind.attaches]
    share = (pl.when(pl.lit(gpu_name is None) | pl.col("runtime_kind").is_in(here)).then(0.0)
             .when(pl.col("model_bytes_loaded") > 0).then(pl.col("model_bytes_gpu").fill_null(0)
                                                          / pl.col("model_bytes_loaded"))
             .otherwise(1.0))
    # a step reads each part of the model from where it sits: times add, so bandwidths add harmonically
    gb_s = 1 / (pl.col("gpu_share") / gpu_gb_s + (1 - pl.col("gpu_share")) / cpu_gb_s)
    source = (pl.when(pl.col("gpu_share") == 0).then(cpu_name)
              .when(pl.col("gpu_share") == 1).then(pl.lit(gpu_name, pl.String))
              .otherwise(pl.concat_str((pl.col("gpu_share") * 100).round(0).cast(pl.Int64).cast(pl.String),
                                       pl.lit(f"% on {gpu_name}, the rest on "), cpu_name)))
    context = requests.filter(pl.col("ok")).group_by("cell_key").agg(
        context=pl.col("prompt_tokens").mean() + pl.col("completion_tokens").mean() / 2)
    seen = pl.col("mean_batch") if batches is not None and not batches.is_empty() else pl.lit(None, pl.Float64)
    batch = pl.min_horizontal("concurrency", pl.col("parallel").fill_null(seen).fill_null(pl.col("concurrency")))
    step = pl.col("weight_bytes") + pl.col("batch") * pl.col("kv_bytes_per_token").fill_null(0) * pl.col("context")
    if batches is not None and not batches.is_empty():
        estimates = estimates.join(batches.select("cell_key", "mean_batch"), on="cell_key", how="left")
    return (estimates.drop("threads", "parallel").join(cells, on="cell_key").join(context, on="cell_key")
            .with_columns(batch=batch, gpu_share=share)
            .with_columns(gb_s=gb_s, bandwidth_source=source)
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
