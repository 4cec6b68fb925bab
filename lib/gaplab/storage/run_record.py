"""A run's settings as typed columns of the run table (schema 12): the load's objectives, lag
bound and equivalence margin, the runtime's launch flags, and what its guard cut or dropped.

`columns(meta)` is what a run writes; `settings(runs)` reads them for every run. Runs of an older
schema hold them only inside meta_json: `settings` takes them from there, the one place that
parses meta_json for these. A flag's value keeps the type the scenario gave it (a number, a
switch, a list or a mapping), so it is stored as its JSON text and read back by `flag_values`.
"""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa

LAG_MS = 10.0  # load.max_lag_ms of runs that recorded none (its default)

OBJECTIVE = pa.struct([("metric", pa.string()), ("percentile", pa.float64()), ("max_ms", pa.float64())])
FLAG = pa.struct([("name", pa.string()), ("value", pa.string())])
FIELDS = [("max_lag_ms", pa.float64()), ("equivalence_margin", pa.float64()), ("slo", pa.list_(OBJECTIVE)),
          ("flags", pa.list_(FLAG)), ("cut_requests", pa.int32()), ("dropped_errors", pa.int32())]
NAMES = [name for name, _ in FIELDS]
VERSION = 12  # the schema version that added FIELDS (storage.store.ADDED)


def columns(meta: dict) -> dict:
    """The typed settings of one run, from the metadata it is written with."""
    load, guard = meta.get("load") or {}, meta.get("guard") or {}
    flags = (meta.get("cell") or {}).get("flags") or {}
    return {"max_lag_ms": float(load.get("max_lag_ms") or LAG_MS),
            "equivalence_margin": load.get("equivalence_margin"),
            "slo": [{"metric": o["metric"], "percentile": float(o.get("percentile", 99)), "max_ms": float(o["max_ms"])}
                    for o in load.get("slo") or []],
            "flags": [{"name": k, "value": json.dumps(flags[k], sort_keys=True)} for k in sorted(flags)],
            "cut_requests": guard.get("cut_requests"), "dropped_errors": guard.get("dropped_errors")}


SCHEMA = pl.DataFrame(pa.schema([("run_id", pa.string()), *FIELDS]).empty_table()).schema  # what settings() returns


def settings(runs: pl.DataFrame) -> pl.DataFrame:
    """run_id and the typed settings of each run of a run table (store.read_table(raw, 'run'))."""
    if runs.is_empty():
        return pl.DataFrame(schema=SCHEMA)
    typed = runs.filter(pl.col("schema_version") >= VERSION).select(SCHEMA.names())
    older = runs.filter(pl.col("schema_version").fill_null(1) < VERSION)
    rows = [{"run_id": run_id, **columns(json.loads(meta or "{}"))}
            for run_id, meta in older.select("run_id", "meta_json").iter_rows()]
    return pl.concat([typed.cast(SCHEMA), pl.DataFrame(rows, schema=SCHEMA)])


def flag_values(flags: list[dict] | None) -> dict:
    """A run's launch flags (its `flags` column) as the scenario set them: name -> value."""
    return {f["name"]: json.loads(f["value"]) for f in flags or []}
