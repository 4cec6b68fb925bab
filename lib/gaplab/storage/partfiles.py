"""Runs being written: part files while a run is measured, and what happens to those a killed
process left (store.py's docstring describes the layout).

A trial's finished requests are written every load.flush_seconds as
<run_id>.{chunks,requests}.part-NNNN.parquet beside where the run's tables will go (chunk
parts without the identity columns: CHUNKS_PART); the run's own tables replace them when it
ends (store.write_run). `recover` turns those of a run whose process died into a run marked
"interrupted".
"""

from __future__ import annotations

import json

import pyarrow as pa

from gaplab.measure.records import RequestRecord, RunIdentity
from gaplab.storage import backend
from gaplab.storage.backend import Root
from gaplab.storage.store import IDENTITY, SCHEMA_VERSION, TABLES, _identity_row, _remove_parts, _rows, _run_row, _table, _write_tables, run_dir, stored

# A chunks part holds the chunk table's own columns, not the run's identity: repeated on every
# chunk row, the identity was most of the cost of writing a chunk (0.6 of 1.2 us here). The
# requests parts carry it, and `recover` puts it back on every chunk row.
CHUNKS_PART = pa.schema([f for f in TABLES["chunks"] if f.name not in IDENTITY.names])
PART_SCHEMAS = {"requests": TABLES["requests"], "chunks": CHUNKS_PART}


class RunWriter:
    """The part files of a run being measured: `flush` writes the records completed since the
    last call (requests and their chunks), each part atomically; `write_run` ends the run."""

    def __init__(self, raw_dir: Root, identity: RunIdentity | dict, meta: dict):
        identity = _identity_row(identity)
        self.folder = run_dir(raw_dir, identity, identity["run_id"])
        self.identity, self.meta = identity, {**meta, "schema_version": SCHEMA_VERSION}
        self.done = 0  # records already in part files
        self.parts = 0

    def flush(self, records: list[RequestRecord]) -> None:
        new = records[self.done:len(records)]  # the caller only appends finished records
        if not new:
            return
        self.parts += 1
        requests, chunks = _rows(new)
        for name, rows in (("chunks", chunks), ("requests", requests)):
            part = backend.join(self.folder, f"{self.identity['run_id']}.{name}.part-{self.parts:04d}.parquet")
            backend.write_parquet(_table(rows, self.identity, PART_SCHEMAS[name], self.meta), part)
        self.done += len(new)


def recover(raw_dir: Root, machine_id: str | None = None, run_ids: set[str] | None = None) -> list[str]:
    """Turn the part files of runs whose process died into runs marked "interrupted"; returns
    their run ids. Part files of runs that were written after all are removed.

    machine_id: only runs that machine measured. A store shared by several machines holds the
    part files of runs they are measuring now; each sweep recovers its own machine's only (the
    kind a killed sweep of this machine left). run_ids: only these (a cluster's given-up trials)."""
    found: dict[tuple[str, str], list] = {}
    for part in backend.glob(raw_dir, "**/*.part-*.parquet"):
        run_id = backend.name(part).split(".")[0]
        if run_ids is None or run_id in run_ids:
            found.setdefault((str(backend.parent(part)), run_id), []).append(part)
    # a run written after all, maybe in another machine's folder (a cluster task retried elsewhere)
    written = stored(raw_dir, {run_id for _, run_id in found}) if found else set()
    recovered = []
    for (_, run_id), parts in sorted(found.items()):
        parts = sorted(parts)
        folder = backend.parent(parts[0])
        if run_id in written:
            _remove_parts(folder, run_id)
            continue
        # a requests part always has rows; a chunks part is written first, so alone it may be a live
        # run's first flush, and it is left
        first = next((p for p in parts if ".requests.part-" in backend.name(p)), None)
        if first is None:
            continue
        first = backend.read_parquet(first)
        identity = {k: first.column(k)[0].as_py() for k in IDENTITY.names}
        if machine_id is not None and identity["machine_id"] != machine_id:
            continue
        tables = {name: pa.concat_tables([backend.read_parquet(p) for p in parts if f".{name}.part-" in backend.name(p)]
                                         or [PART_SCHEMAS[name].empty_table()])
                  for name in ("requests", "chunks")}
        meta = json.loads(first.schema.metadata[b"gaplab"])
        requests = tables["requests"].to_pylist()
        n = sum(not r["warmup"] for r in requests)
        meta.update(status="interrupted", error=f"the process was killed; {n} measured requests kept")
        _write_tables(raw_dir, identity, meta, [("requests", requests), ("chunks", tables["chunks"].to_pydict()),
                                                ("run", [_run_row(meta, requests)])])
        recovered.append(run_id)
        _remove_parts(folder, run_id)
    return recovered


def discard_parts(raw_dir: Root, run_id: str) -> None:
    """Remove a run's part files wherever they are (an attempt that died, before it is measured again)."""
    for part in backend.glob(raw_dir, f"**/{run_id}.*.part-*.parquet"):
        backend.remove(part)
