"""Parquet store: one immutable file set per run, under data/raw/.

Layout: raw/<hardware_id>/<runtime>/<model>/<quant>/<date>/<run_id>.{run,requests,chunks}.parquet
Every row carries the run identity; run metadata also sits in each file's key-value
metadata under b"gaplab". Files are written to a temporary name and renamed, so a
crash never leaves half a file; a rerun adds files and never rewrites old ones.

While a run is measured, its completed requests are written every few seconds as part
files (<run_id>.requests.part-NNNN.parquet, ...), each complete and readable (a chunks part
holds the chunk columns without the run identity, which its requests part carries). The run's
final tables replace them when it ends; if the process is killed first, `partfiles.recover`
turns the part files into a normal run marked "interrupted", so at most one flush interval of
finished requests is lost.

Every file records the schema version it was written with; ADDED below is the schema's whole
history (what each version added, and why), SCHEMA_VERSION its newest. A file of an older
schema reads with the later columns null: schema 1 files, say, as one trial from an unknown
machine of their class.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa

from gaplab.measure.records import RequestRecord, RunIdentity
from gaplab.storage import backend, run_record
from gaplab.storage.backend import Root

IDENTITY = pa.schema([
    ("run_id", pa.string()), ("cell_id", pa.string()), ("cell_key", pa.string()),
    ("scenario", pa.string()), ("hardware_id", pa.string()), ("machine_id", pa.string()),
    ("series_id", pa.string()), ("trial", pa.int32()), ("runtime", pa.string()),
    ("runtime_kind", pa.string()), ("runtime_version", pa.string()), ("model", pa.string()),
    ("quant", pa.string()), ("workload", pa.string()), ("concurrency", pa.int32()),
    ("threads", pa.int32()), ("parallel", pa.int32()),
    ("rate", pa.float64()), ("workload_kind", pa.string()),
])


def _identity_row(identity: RunIdentity | dict) -> dict:
    """A run identity as the column values it writes; a dict must name every IDENTITY column
    but the load-level ones (rate, workload_kind: null outside speed runs)."""
    row = identity.row() if isinstance(identity, RunIdentity) else {"rate": None, "workload_kind": None, **identity}
    missing = [n for n in IDENTITY.names if n not in row]
    if missing:
        raise ValueError(f"run identity lacks {missing}")
    return row


REQUESTS = pa.schema(list(IDENTITY) + [
    ("request_index", pa.int32()), ("user", pa.int32()), ("warmup", pa.bool_()),
    ("scheduled_ns", pa.int64()), ("sent_ns", pa.int64()), ("first_token_ns", pa.int64()),
    ("last_token_ns", pa.int64()), ("end_ns", pa.int64()),
    ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),
    ("n_chunks", pa.int32()), ("n_token_chunks", pa.int32()), ("output_chars", pa.int32()),
    ("finish_reason", pa.string()), ("http_status", pa.int32()), ("error", pa.string()), ("error_kind", pa.string()),
    ("server_prompt_n", pa.int32()), ("server_prompt_ms", pa.float64()),
    ("server_predicted_n", pa.int32()), ("server_predicted_ms", pa.float64()),
    ("server_load_ms", pa.float64()), ("server_total_ms", pa.float64()),
    ("target_prompt_tokens", pa.int32()), ("target_output_tokens", pa.int32()), ("tag", pa.string()),
    ("max_gap_ns", pa.int64()),
    # schema 9: reasoning models. first_token_ns is the first output chunk of any kind (reasoning
    # included); first_answer_ns the first that is not reasoning. Reasoning tokens as the client counted
    # chunks, and as the server's usage says where it does (completion_tokens includes them).
    ("first_answer_ns", pa.int64()), ("reasoning_chunks", pa.int32()), ("server_reasoning_tokens", pa.int32()),
])

CHUNKS = pa.schema(list(IDENTITY) + [
    ("request_index", pa.int32()), ("warmup", pa.bool_()), ("chunk_index", pa.int32()),
    ("arrival_ns", pa.int64()), ("kind", pa.string()), ("n_chars", pa.int32()),
])

RUNS = pa.schema(list(IDENTITY) + [
    ("status", pa.string()), ("error", pa.string()), ("started_at", pa.string()),
    ("finished_at", pa.string()), ("n_requests", pa.int32()), ("n_errors", pa.int32()),
    ("schema_version", pa.int32()), ("gaplab_version", pa.string()),
    ("cpu_model", pa.string()), ("cpu_cores", pa.int32()), ("memory_gib", pa.int32()),
    ("model_file", pa.string()), ("model_sha256", pa.string()), ("model_note", pa.string()),
    ("launch_command", pa.string()), ("measured_s", pa.float64()),
    ("precision_target", pa.float64()),  # the scenario's load.precision when the run was measured
    ("other_cores", pa.float64()),  # mean cores other processes kept busy during the trial
    ("steal_cores", pa.float64()),  # mean cores the hypervisor took from this machine
    # schema 4: what pages read, typed instead of only inside meta_json
    ("server_started_ns", pa.int64()),  # perf_counter_ns at process start (servers gaplab starts)
    ("server_healthy_ns", pa.int64()),  # when /health first answered 200
    ("server_first_token_ns", pa.int64()),  # first token of the probe sent once healthy
    ("model_bytes_loaded", pa.int64()),  # after the trial, where the runtime says (Ollama's /api/ps)
    ("model_bytes_gpu", pa.int64()),  # of those, in GPU memory
    # schema 5: what a decode step reads (modelfile.Traffic), for the roofline
    ("weight_bytes", pa.int64()), ("kv_bytes_per_token", pa.int64()),
    # schema 8: when the model was loaded (after healthy where the first request loads it: Ollama),
    # and the inference engine under the runtime (Ollama runs llama.cpp)
    ("server_loaded_ns", pa.int64()), ("engine_version", pa.string()),
    # schema 9: why the CPU package's energy was not read (telemetry.Rapl); null where it was
    ("energy_unmeasured", pa.string()),
    # schema 10: the server software that answered (runtimes.identify.NAMES), attached servers included
    ("engine", pa.string()),
    # schema 12: the load's settings, the launch flags and the guard's counts (run_record.FIELDS)
    *run_record.FIELDS,
    ("meta_json", pa.string()),
])

TELEMETRY = pa.schema(list(IDENTITY) + [
    ("t_ns", pa.int64()), ("source", pa.string()), ("metric", pa.string()), ("labels", pa.string()),
    ("value", pa.float64()),
])

TABLES = {"run": RUNS, "requests": REQUESTS, "chunks": CHUNKS, "telemetry": TELEMETRY}


# The schema's history: the columns each version added (so a file is checked against the schema
# it was written with), and why.
ADDED = {2: {"machine_id", "series_id", "trial", "measured_s", "precision_target"},  # trials and machines
         3: {"other_cores", "steal_cores"},  # other work beside a trial
         4: {"server_started_ns", "server_healthy_ns", "server_first_token_ns", "model_bytes_loaded",
             "model_bytes_gpu"},  # cold start and the model's placement as run columns
         5: {"weight_bytes", "kv_bytes_per_token"},  # what a decode step reads (roofline)
         6: {"device"},  # bandwidth rows name their device; the capability table
         7: {"rate", "workload_kind", "target_prompt_tokens", "target_output_tokens", "tag", "max_gap_ns"},  # open loop
         8: {"server_loaded_ns", "engine_version"},  # the model's load apart from the server's start
         9: {"first_answer_ns", "reasoning_chunks", "server_reasoning_tokens", "energy_unmeasured"},  # reasoning, RAPL
         10: {"engine"},  # the engine that answered, attached servers included (runtimes.identify)
         11: {"error_kind"},  # a failed request's kind, named where it failed (RequestRecord.fail)
         run_record.VERSION: set(run_record.NAMES)}  # the run's settings typed, not only in meta_json
SCHEMA_VERSION = max(ADDED)


def schema_for(name: str, version: int) -> pa.Schema:
    """The schema of table `name` as files of schema `version` hold it."""
    later = set().union(*(cols for v, cols in ADDED.items() if v > version))
    schema = TABLES[name]
    return pa.schema([f for f in schema if f.name not in later])


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def run_dir(raw_dir: Root, identity: dict, run_id: str) -> Root:
    date = f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}"
    return backend.join(raw_dir, identity["hardware_id"], identity["runtime"], identity["model"],
                        identity["quant"], date)


def server_figures(timings: dict | None) -> dict:
    """The server's own per-request figures, whatever runtime reported them."""
    t = timings or {}
    if "eval_count" in t or "total_duration" in t:  # Ollama: counts, durations in ns
        ms = lambda k: t[k] / 1e6 if k in t else None  # noqa: E731
        return {"server_prompt_n": t.get("prompt_eval_count"), "server_prompt_ms": ms("prompt_eval_duration"),
                "server_predicted_n": t.get("eval_count"), "server_predicted_ms": ms("eval_duration"),
                "server_load_ms": ms("load_duration"), "server_total_ms": ms("total_duration")}
    return {"server_prompt_n": t.get("prompt_n"), "server_prompt_ms": t.get("prompt_ms"),
            "server_predicted_n": t.get("predicted_n"), "server_predicted_ms": t.get("predicted_ms"),
            "server_load_ms": None, "server_total_ms": None}


def _request_row(rec: RequestRecord) -> dict:
    return {
        "request_index": rec.index, "user": rec.user, "warmup": rec.warmup,
        "scheduled_ns": rec.scheduled_ns, "sent_ns": rec.sent_ns, "first_token_ns": rec.first_token_ns,
        "last_token_ns": rec.last_token_ns, "end_ns": rec.end_ns,
        "prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens,
        "n_chunks": len(rec.chunks), "n_token_chunks": rec.token_chunks,
        "output_chars": rec.output_chars, "finish_reason": rec.finish_reason,
        "http_status": rec.http_status, "error": rec.error, "error_kind": rec.error_kind, **server_figures(rec.server_timings),
        "target_prompt_tokens": rec.target_prompt_tokens, "target_output_tokens": rec.target_output_tokens,
        "tag": rec.tag, "max_gap_ns": rec.max_gap_ns, "first_answer_ns": rec.first_answer_ns,
        "reasoning_chunks": rec.reasoning_chunks, "server_reasoning_tokens": rec.server_reasoning_tokens,
    }


def _table(rows: list[dict] | dict[str, list], identity: dict, schema: pa.Schema, meta: dict) -> pa.Table:
    """A table of rows (dicts) or of columns (a dict of lists), every row carrying the identity."""
    n = len(next(iter(rows.values()))) if isinstance(rows, dict) else len(rows)
    column = rows.get if isinstance(rows, dict) else lambda name: [r.get(name) for r in rows]
    # The identity's values are repeated in C: converted from Python once per row, its columns
    # cost 2.7 us a chunk row, more than the client spends reading the chunk, and a flush runs
    # beside the load (bench/client_capacity.py prints what it costs).
    cols = [pa.repeat(pa.scalar(identity.get(f.name), f.type), n) if f.name in identity
            else pa.array(column(f.name), f.type) for f in schema]
    table = pa.Table.from_arrays(cols, schema=schema)
    return table.replace_schema_metadata({b"gaplab": json.dumps(meta, default=str).encode()})


def _write_tables(raw_dir: Root, identity: RunIdentity | dict, meta: dict,
                  tables: Sequence[tuple[str, list[dict] | dict[str, list]]]) -> dict:
    """Write one run's tables in order, each atomically; refuses to overwrite any of them."""
    identity = _identity_row(identity)
    folder = run_dir(raw_dir, identity, identity["run_id"])
    paths = {name: backend.join(folder, f"{identity['run_id']}.{name}.parquet") for name, _ in tables}
    for path in paths.values():
        if backend.exists(path):
            raise FileExistsError(f"{path} exists: runs are immutable, use a new run id")
    for name, rows in tables:
        backend.write_parquet(_table(rows, identity, TABLES[name], meta), paths[name])
    return paths


def _rows(records: list[RequestRecord]) -> tuple[list[dict], dict[str, list]]:
    """Request rows, and the chunk table's columns, of some records (columns: a trial has
    thousands of chunks a second, and a dict per chunk cost more than reading it)."""
    requests = [_request_row(r) for r in records]
    chunks: dict[str, list] = {k: [] for k in ("request_index", "warmup", "chunk_index", "arrival_ns", "kind",
                                                "n_chars")}
    for r in records:
        if r.chunks:
            n = len(r.chunks)
            arrival, kind, chars = zip(*r.chunks)
            chunks["request_index"] += [r.index] * n
            chunks["warmup"] += [r.warmup] * n
            chunks["chunk_index"] += range(n)
            chunks["arrival_ns"] += arrival
            chunks["kind"] += kind
            chunks["n_chars"] += chars
    return requests, chunks


def _run_row(meta: dict, requests: list[dict]) -> dict:
    measured = [r for r in requests if not r["warmup"] and r["sent_ns"]]
    span = (max(r["end_ns"] for r in measured) - min(r["sent_ns"] for r in measured)) / 1e9 if measured else 0.0
    return {**{k: meta.get(k) for k in RUNS.names}, **run_record.columns(meta), "n_requests": len(requests),
            "precision_target": (meta.get("load") or {}).get("precision"),
            "n_errors": sum(r["error"] is not None for r in requests), "measured_s": span,
            "schema_version": SCHEMA_VERSION, "meta_json": json.dumps(meta, default=str)}


def write_run(raw_dir: Root, identity: RunIdentity | dict, meta: dict, records: list[RequestRecord],
              telemetry: list[dict] | None = None) -> Root:
    """Write the run's tables (run, requests, chunks, and telemetry when sampled); returns the
    run table's path. Never overwrites a file; removes the run's part files once written."""
    identity = _identity_row(identity)
    meta = {**meta, "schema_version": SCHEMA_VERSION}
    requests, chunks = _rows(records)
    tables = [("requests", requests), ("chunks", chunks)] + ([("telemetry", telemetry)] if telemetry else [])
    # the run table last: it marks the run written
    path = _write_tables(raw_dir, identity, meta, tables + [("run", [_run_row(meta, requests)])])["run"]
    _remove_parts(backend.parent(path), identity["run_id"])
    return path


def _remove_parts(folder: Root, run_id: str) -> None:
    for part in backend.glob(folder, f"{run_id}.*.part-*.parquet"):
        backend.remove(part)


# The last frame read of each table in each folder, with the files it came from. A page asks
# for the same table several times (setup, estimates, cold starts, placement); runs are
# immutable and only ever added, so while the file list is the same the frame is too.
_READ: dict[tuple[str, str], tuple[tuple, pl.DataFrame]] = {}


def scan_table(raw_dir: Root, name: str, files: list[Root] | None = None) -> pl.LazyFrame:
    """All files of one table below raw_dir (or the given ones) as one lazy scan, in the current
    schema: files of an older schema lack the newer columns, which read as null."""
    files = backend.glob(raw_dir, f"**/*.{name}.parquet") if files is None else files
    return backend.scan(files, TABLES[name])


def read_table(raw_dir: Root, name: str) -> pl.DataFrame:
    """All files of one table ('run', 'requests', 'chunks', ...) below raw_dir, as one frame;
    read once while its files are unchanged."""
    files = backend.glob(raw_dir, f"**/*.{name}.parquet")
    signature = backend.signature(files)
    key = (str(raw_dir if backend.is_url(raw_dir) else Path(raw_dir).resolve()), name)
    if key not in _READ or _READ[key][0] != signature:
        _READ[key] = (signature, scan_table(raw_dir, name, files).collect())
    return _READ[key][1]


def read_run(raw_dir: Root, run_id: str, name: str, folder: Root | None = None) -> pl.DataFrame:
    """One table of one run; folder: the run's own (write_run's path's parent), read without
    listing the store."""
    if folder is not None:
        path = backend.join(folder, f"{run_id}.{name}.parquet")
    else:
        files = backend.glob(raw_dir, f"**/{run_id}.{name}.parquet")
        if not files:
            raise FileNotFoundError(f"run {run_id} has no {name} table under {raw_dir}")
        path = files[0]
    frame = pl.from_arrow(backend.read_parquet(path))
    assert isinstance(frame, pl.DataFrame)  # a Table converts to a frame (a Series only from an array)
    return frame


def run_files(raw_dir: Root, name: str, run_ids) -> list[Root]:
    """The files of table `name` of those runs, in any machine's folder (one listing of the store)."""
    wanted = set(run_ids)
    return [p for p in backend.glob(raw_dir, f"**/*.{name}.parquet") if backend.name(p).split(".")[0] in wanted]


def stored(raw_dir: Root, run_ids) -> set[str]:
    """Those of the run ids whose run table is in the store."""
    return {backend.name(p).split(".")[0] for p in run_files(raw_dir, "run", run_ids)}


# ---------------------------------------------------------------- quality tables (gaplab.quality)
# A quality run writes <run_id>.quality.parquet (one row per figure, or one row saying why
# the run failed) and, when it asked a server questions, <run_id>.answers.parquet (one row
# per question). Same folders and identity keys as the speed runs, so the two join.

QUALITY = pa.schema(list(IDENTITY) + [
    ("metric", pa.string()), ("value", pa.float64()),
    ("uncertainty", pa.float64()),  # the ± the tool printed (one standard error), where it printed one
    ("ci_low", pa.float64()), ("ci_high", pa.float64()),  # 95% interval (Wilson) for accuracies
    ("n", pa.int64()), ("unit", pa.string()),
    ("reference", pa.string()),  # the quant (fidelity) this figure compares with
    ("eval_set", pa.string()), ("eval_sha256", pa.string()),
    ("model_file", pa.string()), ("model_sha256", pa.string()), ("model_bytes", pa.int64()),
    ("model_note", pa.string()), ("status", pa.string()), ("error", pa.string()), ("command", pa.string()),
    ("measured_at", pa.string()), ("schema_version", pa.int32()), ("gaplab_version", pa.string()),
])

ANSWERS = pa.schema(list(IDENTITY) + [
    ("item_id", pa.string()), ("kind", pa.string()), ("scoring", pa.string()), ("question", pa.string()),
    ("expected", pa.string()), ("completion", pa.string()), ("extracted", pa.string()), ("correct", pa.bool_()),
    ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),
    ("completion_token_ids", pa.list_(pa.int32())),  # the completion as the server's tokenizer splits it
    ("finish_reason", pa.string()), ("latency_ms", pa.float64()), ("error", pa.string()),
])

TABLES["quality"] = QUALITY
TABLES["answers"] = ANSWERS


def write_quality(raw_dir: Root, identity: RunIdentity | dict, rows: list[dict], meta: dict,
                  answers: list[dict] | None = None) -> Root:
    """Write one quality run (answers first, then its figures); returns the quality table's path."""
    before = [("answers", answers)] if answers is not None else []
    return _write_figures(raw_dir, identity, meta, "quality", rows, before)


def _write_figures(raw_dir: Root, identity: RunIdentity | dict, meta: dict, name: str, rows: list[dict],
                   before: Sequence[tuple[str, list[dict]]] = ()) -> Root:
    """A run of figures (quality, bandwidth, capability): `before`'s tables, then table `name`, whose
    rows carry the schema version as a column; returns that table's path."""
    rows = [{**r, "schema_version": SCHEMA_VERSION} for r in rows]
    tables = list(before) + [(name, rows)]
    return _write_tables(raw_dir, identity, {**meta, "schema_version": SCHEMA_VERSION}, tables)[name]


# ---------------------------------------------------------------- the machine (gaplab.machine.bandwidth)
# A sweep measures the memory bandwidth of the machine it runs on: <run_id>.bandwidth.parquet,
# one row per repeat and thread count, under the runtime name "stream-triad".

BANDWIDTH = pa.schema(list(IDENTITY) + [
    ("repeat", pa.int32()), ("threads_used", pa.int32()), ("gb_s", pa.float64()), ("elements", pa.int64()),
    ("method", pa.string()), ("measured_at", pa.string()), ("schema_version", pa.int32()),
    ("device", pa.string()),  # schema 6: "cpu", or "gpu:<index> <name>" (its figure from NVML or a card table)
])
TABLES["bandwidth"] = BANDWIDTH


def write_bandwidth(raw_dir: Root, identity: RunIdentity | dict, rows: list[dict]) -> Root:
    return _write_figures(raw_dir, identity, {}, "bandwidth", rows)


# ---------------------------------------------------------------- what a runtime can do (gaplab.capability.judges)
# A capability run probes one server with real requests: <run_id>.capability.parquet, one row per
# capability with its verdict and the evidence (schema 6).

CAPABILITY = pa.schema(list(IDENTITY) + [
    ("capability", pa.string()), ("verdict", pa.string()),  # pass, fail or not offered
    ("value", pa.float64()), ("unit", pa.string()),  # the figure the verdict rests on, where there is one
    ("http_status", pa.int32()), ("evidence", pa.string()),  # what the server answered, in short
    ("request", pa.string()),  # what was asked, in words
    ("measured_at", pa.string()), ("schema_version", pa.int32()),
])
TABLES["capability"] = CAPABILITY


def write_capability(raw_dir: Root, identity: RunIdentity | dict, rows: list[dict], meta: dict) -> Root:
    return _write_figures(raw_dir, identity, meta, "capability", rows)


def completed_quality(raw_dir: Root, machine_id: str) -> set[str]:
    """cell_keys of quality runs completed on this machine."""
    q = read_table(raw_dir, "quality")
    done = q.filter((pl.col("machine_id") == machine_id) & (pl.col("status") == "complete"))
    return set(done["cell_key"].to_list())
