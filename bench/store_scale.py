"""Whether the report's analysis scales: the per-cell summary of 10 million request rows.

    .venv/bin/python bench/store_scale.py [--dir /tmp/gaplab-scale] [--keep] [--runs 2000] [--rows 5000]

Writes a synthetic store (the store's schemas, file names and folders, zstd) of `runs` runs of
`rows` requests each: 3 machines x 3 runtimes x 3 models x 3 quants x 5 concurrencies, 4-5
trials per cell, a few interrupted trials and older series the report leaves out, latencies
and token counts drawn per run, rare errors. Chunk tables are not written: the summary never
reads them. Then, each in a fresh process so its peak RSS is its own, it times the per-cell
summary the report computes (speed.cell_summary of speed.scan_requests: one lazy scan) and
the reader it replaced (every file read eagerly and concatenated) when this machine has the
memory for it, checks both against a direct count per cell, and prints seconds and peak RSS.
Target (issue 11): 10,000,000 rows in 2,000 runs in at most 10 s and 2 GB.

--keep reuses the store in --dir when it holds the asked number of runs (else writes it);
without --dir the store goes to a temporary folder, removed at the end. The eager reference
held 15 GB here: it is skipped when the machine's free memory looks short (--eager runs it
anyway, --no-eager never). A summary that differs from the direct count or from the other
reader's ends the bench with an error.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gaplab.analysis import metrics
from gaplab.report import speed
from gaplab.storage import store
from gaplab.storage.store import SCHEMA_VERSION

MACHINES = [("m-5c1e0a2b", "amd-epyc-2c-24g-f33533", 1.0), ("m-97ae1521", "intel-r-xeon-r-processor-2c-24g-6ea473", 0.8),
            ("m-0d4f7e19", "intel-xeon-8c-32g-3a91c2", 3.2)]  # (machine, hardware class, relative speed)
RUNTIMES = [("llamacpp-single", "llamacpp", "llama.cpp b4500", 1.0), ("llamacpp-batch8", "llamacpp", "llama.cpp b4500", 1.0),
            ("vllm", "vllm", "vllm 0.8.5 (cpu)", 0.7)]  # (runtime, kind, version, relative speed)
MODELS = [("smollm2-135m", 135), ("gemma3-270m", 270), ("qwen2.5-0.5b", 494)]  # (model, million parameters)
QUANTS = [("Q4_K_M", 0.6), ("Q8_0", 1.0), ("F16", 1.9)]  # (quant, bytes per weight relative to Q8_0)
CONCURRENCY = [1, 2, 4, 8, 16]
PROMPT, OUTPUT = 256, 128  # the workload's target tokens
START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def cells() -> list[dict]:
    """Every cell of the synthetic matrix; the machine changes fastest, so any first few span all three."""
    out = []
    for (rt, kind, version, r_speed), (model, params), (quant, q_bytes), c, (machine, hw, m_speed) in itertools.product(
            RUNTIMES, MODELS, QUANTS, CONCURRENCY, MACHINES):
        cell_id = f"{rt}/{model}/{quant}/p{PROMPT}-o{OUTPUT}/c{c}"
        out.append({"cell_id": cell_id, "cell_key": hashlib.sha256(f"{hw}/{cell_id}".encode()).hexdigest()[:16],
                    "scenario": "scale", "hardware_id": hw, "machine_id": machine, "runtime": rt,
                    "runtime_kind": kind, "runtime_version": version, "model": model, "quant": quant,
                    "workload": f"p{PROMPT}-o{OUTPUT}", "concurrency": c, "threads": 2, "parallel": max(c, 8),
                    "rate": None, "workload_kind": "fixed",
                    # one user's decode tok/s alone on the machine: memory-bound, so weights read per token
                    "_tok_s": 9000 * m_speed * r_speed / (params * q_bytes)})
    return out


def plan(n_runs: int, cs: list[dict] | None = None) -> list[dict]:
    """The runs to write, in time order: trial t of every cell (of cs, default all), then trial
    t + 1. Every 20th cell measured an older series first (a forced rerun) and about 1 trial in
    100 was interrupted: the report leaves both out."""
    cs, runs = cs or cells(), []
    rng = np.random.default_rng(7)
    for k in range(n_runs):
        cell = cs[k % len(cs)]
        rerun = (k % len(cs)) % 20 == 0
        t = k // len(cs) + (0 if rerun else 1)  # a rerun cell's first run is trial 1 of the old series
        when = START + timedelta(minutes=7 * k)
        run_id = when.strftime("%Y%m%dT%H%M%SZ") + f"-{k:06x}"
        old = rerun and t == 0
        series = "20260101T000000Z-" + ("old" if old else "new") + cell["cell_key"][:6]
        runs.append({**cell, "run_id": run_id, "series_id": series, "trial": 1 if old else t,
                     "status": "interrupted" if rng.random() < 0.01 else "complete", "_seed": k, "_when": when})
    return runs


def request_table(run: dict, n: int) -> pa.Table:
    """n requests of one closed-loop run: each user sends its next request when its last ends."""
    rng = np.random.default_rng(run["_seed"])
    c = run["concurrency"]
    tok_s = run["_tok_s"] / c ** 0.55 * rng.lognormal(0, 0.03)  # users share the machine; trial-to-trial noise
    itl_ms = 1000 / tok_s
    ttft_ms = rng.lognormal(np.log(PROMPT / (tok_s * 8) * 1000 * (1 + 0.15 * (c - 1))), 0.25, n)
    tokens = np.where(rng.random(n) < 0.05, rng.integers(1, OUTPUT, n), OUTPUT).astype(np.int32)
    err = rng.random(n) < 0.002
    busy = err & (rng.random(n) < 0.5)  # refused at once (HTTP 503): no token
    tokens[busy], tokens[err & ~busy] = 0, 3  # the others broke after 3 tokens: a first token, yet failed
    decode_ms = np.maximum(tokens - 1, 0) * itl_ms * rng.lognormal(0, 0.05, n)
    e2e_ms = np.where(busy, rng.uniform(1, 50, n), ttft_ms + decode_ms + 0.3)
    # request i is user i % c's (i // c)-th: its send time is the sum of that user's earlier requests
    rounds = -(-n // c)
    lanes = np.zeros(rounds * c)
    lanes[:n] = e2e_ms + rng.uniform(0.05, 0.2, n)
    sent_ms = (np.cumsum(lanes.reshape(rounds, c), axis=0) - lanes.reshape(rounds, c)).reshape(-1)[:n]
    base = int(run["_when"].timestamp() * 1e9) % 10 ** 15  # perf_counter-like, not epoch
    ns = lambda ms: (base + ms * 1e6).astype(np.int64)  # noqa: E731
    sent = ns(sent_ms)
    first = ns(sent_ms + ttft_ms)
    last = ns(sent_ms + ttft_ms + decode_ms)
    end = ns(sent_ms + e2e_ms)
    quiet = err | (run["runtime_kind"] != "llamacpp")  # only llama.cpp's server reports its own timings
    i32 = lambda a: pa.array(a, pa.int32())  # noqa: E731
    cols = {
        "request_index": i32(np.arange(n)), "user": i32(np.arange(n) % c),
        "warmup": pa.array(np.arange(n) < c),  # each user's first request warms the server up
        "scheduled_ns": pa.array(sent - rng.integers(20_000, 90_000, n)), "sent_ns": pa.array(sent),
        "first_token_ns": pa.array(first, mask=busy), "last_token_ns": pa.array(last, mask=busy), "end_ns": pa.array(end),
        "prompt_tokens": i32(np.full(n, PROMPT + 14)), "completion_tokens": i32(tokens),
        "n_chunks": i32(tokens + 2), "n_token_chunks": i32(tokens), "output_chars": i32(tokens * 4),
        "finish_reason": pa.array(np.where(err, None, np.where(tokens == OUTPUT, "length", "stop")), pa.string()),
        "http_status": i32(np.where(busy, 503, 200)),
        "error": pa.array(np.where(busy, "HTTP 503: busy", np.where(err, "connection reset after 3 tokens", None)),
                          pa.string()),
        "error_kind": pa.array(np.where(busy, "HTTP 503", np.where(err, "connection reset", None)), pa.string()),
        "server_prompt_n": pa.array(np.full(n, PROMPT), pa.int32(), mask=quiet),
        "server_prompt_ms": pa.array(ttft_ms * 0.9, mask=quiet),
        "server_predicted_n": pa.array(tokens, pa.int32(), mask=quiet),
        "server_predicted_ms": pa.array(decode_ms * 0.98, mask=quiet),
        "server_load_ms": pa.nulls(n, pa.float64()), "server_total_ms": pa.nulls(n, pa.float64()),
        "target_prompt_tokens": i32(np.full(n, PROMPT)), "target_output_tokens": i32(np.full(n, OUTPUT)),
        "tag": pa.nulls(n, pa.string()), "max_gap_ns": pa.array((itl_ms * rng.uniform(1.5, 4, n) * 1e6).astype(np.int64)),
        # no reasoning model: the first answer token is the first token
        "first_answer_ns": pa.array(first, mask=busy), "reasoning_chunks": i32(np.zeros(n, dtype=np.int64)),
        "server_reasoning_tokens": pa.nulls(n, pa.int32()),
    }
    ident = {f.name: pa.repeat(pa.scalar(run[f.name], f.type), n) for f in store.IDENTITY}
    return pa.Table.from_pydict({**ident, **cols}, schema=store.REQUESTS)


def run_table(run: dict, req: pa.Table) -> pa.Table:
    measured = req.filter(pc.invert(req["warmup"]))
    span = (pc.max(measured["end_ns"]).as_py() - pc.min(measured["sent_ns"]).as_py()) / 1e9
    row = {**{k: run[k] for k in store.IDENTITY.names}, "status": run["status"],
           "error": "the process was killed" if run["status"] == "interrupted" else None,
           "started_at": run["_when"].isoformat(), "finished_at": (run["_when"] + timedelta(seconds=span)).isoformat(),
           "n_requests": req.num_rows, "n_errors": req.num_rows - req["error"].null_count,
           "schema_version": SCHEMA_VERSION, "gaplab_version": "0.1.0", "cpu_model": "synthetic", "cpu_cores": 2,
           "memory_gib": 24, "measured_s": span, "precision_target": 0.05, "other_cores": 0.05, "steal_cores": 0.0,
           "meta_json": json.dumps({"status": run["status"], "synthetic": True})}
    return pa.Table.from_pylist([row], schema=store.RUNS)


def write_one(args: tuple[Path, dict, int]) -> None:
    raw, run, n = args
    folder = store.run_dir(raw, run, run["run_id"])
    folder.mkdir(parents=True, exist_ok=True)
    meta = {b"gaplab": json.dumps({"schema_version": SCHEMA_VERSION, "status": run["status"]}).encode()}
    req = request_table(run, n)
    # the requests table first, the run table last: as store.write_run, the run file marks the run written
    pq.write_table(req.replace_schema_metadata(meta), folder / f"{run['run_id']}.requests.parquet", compression="zstd")
    pq.write_table(run_table(run, req).replace_schema_metadata(meta), folder / f"{run['run_id']}.run.parquet",
                   compression="zstd")


def generate(raw: Path, n_runs: int = 2000, rows: int = 5000, jobs: int = 2, cs: list[dict] | None = None) -> None:
    """Write a synthetic store of n_runs runs of `rows` requests each below raw, over the cells cs
    (default: all 405)."""
    work = [(Path(raw), run, rows) for run in plan(n_runs, cs)]
    if jobs > 1:
        with Pool(jobs) as pool:
            pool.map(write_one, work, chunksize=16)
    else:
        for w in work:
            write_one(w)


# ---------------------------------------------------------------- the analysis, in a child process

def eager_requests(raw: Path) -> pl.DataFrame:
    """The reader the lazy scan replaced: every requests file parsed on its own, then concatenated,
    then the report's filters (speed.measured_requests before issue 11)."""
    frame = pl.concat([pl.read_parquet(f) for f in sorted(raw.glob("**/*.requests.parquet"))], how="diagonal_relaxed")
    runs = metrics.selected_runs(store.read_table(raw, "run"))
    req = metrics.with_run_keys(frame).join(runs.select("run_id"), on="run_id", how="semi")
    return metrics.with_latencies(req.filter(~pl.col("warmup")))


def analyze(raw: Path, how: str, out: Path) -> None:
    """Time the per-cell summary of every machine's cells; write it to `out`; print seconds and peak RSS."""
    t0 = time.perf_counter()
    requests = speed.scan_requests(raw) if how == "lazy" else eager_requests(raw)
    summary = speed.cell_summary(requests)
    seconds = time.perf_counter() - t0
    summary.write_parquet(out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_mb": peak}))


def child(raw: Path, how: str, out: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", how, "--dir", str(raw), "--out", str(out)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {how} analysis failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def direct_counts(raw: Path) -> pl.DataFrame:
    """Measured requests and errors per cell, counted straight from the files with pyarrow: the
    runs the report combines (complete trials of each cell's newest series), non-warmup rows."""
    runs = pl.concat([pl.from_arrow(pq.read_table(f, columns=["run_id", "cell_key", "machine_id", "series_id", "status"]))
                      for f in raw.glob("**/*.run.parquet")])
    newest = runs.sort("run_id").group_by("machine_id", "cell_key").agg(pl.col("series_id").last())
    keep = set(runs.join(newest, on=["machine_id", "cell_key", "series_id"]).filter(pl.col("status") == "complete")["run_id"])
    rows = []
    for f in raw.glob("**/*.requests.parquet"):
        run_id = f.name.split(".")[0]
        if run_id in keep:
            t = pq.read_table(f, columns=["machine_id", "cell_key", "warmup", "error"])
            measured = t.filter(pc.invert(t["warmup"]))
            rows.append((t["machine_id"][0].as_py(), t["cell_key"][0].as_py(), measured.num_rows,
                         measured.num_rows - measured["error"].null_count))
    return (pl.DataFrame(rows, schema=["machine_id", "cell_key", "requests", "errors"], orient="row")
            .group_by("machine_id", "cell_key").agg(pl.len().alias("trials"), pl.col("requests", "errors").sum()))


def check(summary: pl.DataFrame, expected: pl.DataFrame, how: str) -> None:
    keys = ["machine_id", "cell_key", "trials", "requests", "errors"]
    got = summary.select(keys).with_columns(pl.col("trials", "requests", "errors").cast(pl.Int64)).sort(keys[:2])
    want = expected.select(keys).with_columns(pl.col("trials", "requests", "errors").cast(pl.Int64)).sort(keys[:2])
    if not got.equals(want):
        raise SystemExit(f"the {how} summary differs from the direct count per cell:\n{got}\n{want}")


def equal(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    """Two summaries hold the same figures; floats to 1e-9, as sums taken in another order differ
    in their last bits. Cells of different machines tie in the summary's sort: compare by key."""
    from polars.testing import assert_frame_equal

    try:
        assert_frame_equal(a.sort("machine_id", "cell_key"), b.sort("machine_id", "cell_key"), rel_tol=1e-9)
    except AssertionError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="where the store goes (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="reuse the store in --dir if it has the runs asked for")
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=5000, help="requests per run")
    ap.add_argument("--no-eager", action="store_true", help="skip the eager reference")
    ap.add_argument("--eager", action="store_true", help="run the eager reference even if memory looks short")
    ap.add_argument("--child", choices=["lazy", "eager"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return analyze(a.dir, a.child, a.out)

    raw = a.dir or Path(tempfile.mkdtemp(prefix="gaplab-scale-"))
    have = sum(1 for _ in raw.glob("**/*.run.parquet")) if raw.exists() else 0
    if a.keep and have == a.runs:
        print(f"{raw}: reusing {have} runs")
    else:
        if raw.exists() and have:
            if not a.keep and a.dir:
                raise SystemExit(f"{raw} already holds runs: pass --keep to reuse it, or another --dir")
            shutil.rmtree(raw)
        t0 = time.perf_counter()
        generate(raw, a.runs, a.rows)
        print(f"{raw}: wrote {a.runs} runs of {a.rows} requests in {time.perf_counter() - t0:.1f} s")

    try:
        expected = direct_counts(raw)
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in raw.glob("**/*.requests.parquet"))
        runs = sum(1 for _ in raw.glob("**/*.run.parquet"))
        print(f"{total:,} request rows in {runs:,} runs; {expected.height} cells, "
              f"{int(expected['requests'].sum()):,} measured requests in the runs the report combines")
        out = raw.parent / f".{raw.name}.summary.parquet"
        lazy = child(raw, "lazy", out)
        check(pl.read_parquet(out), expected, "lazy")
        print(f"lazy scan (speed.cell_summary of speed.scan_requests): {lazy['seconds']:.2f} s, "
              f"peak RSS {lazy['peak_mb']:,.0f} MB; per-cell counts match the direct count "
              f"[target: <= 10 s, <= 2048 MB: {'met' if lazy['seconds'] <= 10 and lazy['peak_mb'] <= 2048 else 'NOT met'}]")
        # the eager reader held 1.5 GB per million rows of this store (15.2 GB for 10 M); on a
        # machine shared with other work it runs only with room to spare, or when asked (--eager)
        need_mb = total / 1e6 * 1600
        free_mb = psutil.virtual_memory().available / 2 ** 20
        if a.no_eager or (need_mb > free_mb * 0.75 and not a.eager):
            print(f"eager reference skipped: it needs about {need_mb:,.0f} MB, {free_mb:,.0f} MB are free "
                  f"(--eager runs it anyway)")
        else:
            lazy_summary = pl.read_parquet(out)
            eager = child(raw, "eager", out)
            check(pl.read_parquet(out), expected, "eager")
            if not equal(pl.read_parquet(out), lazy_summary):
                raise SystemExit("the lazy and the eager summaries differ")
            print(f"eager read and concatenate (the reader before):      {eager['seconds']:.2f} s, "
                  f"peak RSS {eager['peak_mb']:,.0f} MB; the two summaries are equal")
            print(f"lazy vs eager: x{eager['seconds'] / lazy['seconds']:.1f} faster, "
                  f"x{eager['peak_mb'] / lazy['peak_mb']:.1f} less memory")
        out.unlink(missing_ok=True)
    finally:
        if not a.dir:
            shutil.rmtree(raw, ignore_errors=True)


if __name__ == "__main__":
    main()
