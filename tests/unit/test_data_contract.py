"""Every committed file in data/raw/ keeps the contract: the schema of its table, a full
run identity on every row, and an identity that matches its path."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gaplab.storage import store

ROOT = Path(__file__).resolve().parents[2]


# Every table file under data/raw (no git needed: a copy of the tree is checked the same way);
# part files are the journal of a run being measured and never committed.
FILES = sorted(p for p in (ROOT / "data" / "raw").rglob("*.parquet") if ".part-" not in p.name)


def test_there_are_committed_runs():
    assert len(FILES) >= 10, f"expected the committed runs under {ROOT / 'data' / 'raw'}, found {len(FILES)} files"


def test_each_run_has_its_three_tables():
    runs = {}
    for f in FILES:
        run_id, table = f.name.split(".")[:2]
        runs.setdefault((f.parent, run_id), set()).add(table)
    speed = ({"run", "requests", "chunks"}, {"run", "requests", "chunks", "telemetry"})
    quality = ({"quality"}, {"quality", "answers"})
    machine = ({"bandwidth"}, {"capability"})
    assert all(tables in speed + quality + machine for tables in runs.values()), runs


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT / "data" / "raw")))
def test_file_keeps_the_contract(path):
    run_id, table = path.name.split(".")[:2]
    t = pq.read_table(path)
    assert b"gaplab" in t.schema.metadata
    version = json.loads(t.schema.metadata[b"gaplab"]).get("schema_version", 1)
    assert t.schema.remove_metadata() == store.schema_for(table, version), \
        f"{path.name}: schema differs from store.{table.upper()} as of schema version {version}"
    hw, runtime, model, quant, date = path.relative_to(ROOT / "data" / "raw").parts[:5]
    for name in store.schema_for("run", version).names:
        if name in store.IDENTITY.names and name not in ("threads", "parallel", "concurrency", "rate",
                                                          "workload_kind"):
            assert t.column(name).null_count == 0, f"{path.name}: {name} has nulls"
    levels = t.select([n for n in ("concurrency", "rate") if n in t.column_names]).to_pylist()
    assert all((r["concurrency"] is None) != (r.get("rate") is None) for r in levels), \
        f"{path.name}: each row has a concurrency (users) or a rate (open loop), not both or neither"
    expect = {"run_id": run_id, "hardware_id": hw, "runtime": runtime, "model": model, "quant": quant}
    for name, value in expect.items():
        assert set(t.column(name).to_pylist()) <= {value}, f"{path.name}: {name} does not match the path"
    assert date == f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}"
    if table == "run":
        assert t.num_rows == 1 and t.column("status")[0].as_py() in {"complete", "interrupted", "failed"}
