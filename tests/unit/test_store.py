import json

import polars as pl
import pyarrow.parquet as pq
import pytest

from gaplab.measure.records import RequestRecord
from gaplab.storage import partfiles, store


def identity(run_id="20260101T000000Z-abc123", **kw):
    base = {"run_id": run_id, "cell_id": "rt/m/Q8_0/w/c2", "cell_key": "k1", "scenario": "s",
            "hardware_id": "hw", "machine_id": "m-1", "series_id": run_id, "trial": 1, "runtime": "rt", "runtime_kind": "llamacpp", "runtime_version": "v",
            "model": "m", "quant": "Q8_0", "workload": "w", "concurrency": 2, "threads": 1, "parallel": 8}
    return {**base, **kw}


def records():
    ok = RequestRecord(index=0, user=0, warmup=False, scheduled_ns=10, sent_ns=20, first_token_ns=120,
                       last_token_ns=220, end_ns=230, prompt_tokens=8, completion_tokens=3,
                       finish_reason="length", http_status=200, output_chars=9,
                       server_timings={"predicted_n": 3, "predicted_ms": 2.0, "prompt_n": 8, "prompt_ms": 1.5},
                       chunks=[(50, "role", 0), (120, "content", 3), (170, "content", 3), (220, "content", 3)])
    failed = RequestRecord(index=1, user=1, warmup=False, scheduled_ns=10, sent_ns=21, end_ns=40,
                           error="ClientConnectorError: refused")
    return [ok, failed]


def test_roundtrip_identity_metadata_and_failed_rows(tmp_path):
    path = store.write_run(tmp_path, identity(), {"status": "complete", "secret": "no"}, records())
    folder = path.parent
    assert folder == tmp_path / "hw" / "rt" / "m" / "Q8_0" / "2026-01-01"
    assert sorted(p.name for p in folder.iterdir()) == [
        f"20260101T000000Z-abc123.{t}.parquet" for t in ("chunks", "requests", "run")]
    req = store.read_table(tmp_path, "requests")
    assert req.height == 2  # the failed request is a row
    assert req.filter(pl.col("error").is_not_null())["request_index"].to_list() == [1]
    assert set(req["hardware_id"]) == {"hw"} and set(req["concurrency"]) == {2}
    assert req.filter(pl.col("request_index") == 0)["server_predicted_n"][0] == 3
    chunks = store.read_table(tmp_path, "chunks")
    assert chunks["kind"].to_list() == ["role", "content", "content", "content"]
    assert set(chunks["cell_key"]) == {"k1"}
    run = store.read_table(tmp_path, "run")
    assert run["n_requests"][0] == 2 and run["n_errors"][0] == 1 and run["status"][0] == "complete"
    meta = json.loads(pq.read_schema(folder / "20260101T000000Z-abc123.requests.parquet").metadata[b"gaplab"])
    assert meta["schema_version"] == store.SCHEMA_VERSION
    assert not list(tmp_path.rglob("*.tmp"))


def test_runs_are_immutable(tmp_path):
    store.write_run(tmp_path, identity(), {"status": "complete"}, records())
    with pytest.raises(FileExistsError):
        store.write_run(tmp_path, identity(), {"status": "complete"}, records())


def test_missing_identity_is_refused(tmp_path):
    ident = identity()
    del ident["hardware_id"]
    with pytest.raises(ValueError, match="hardware_id"):
        store.write_run(tmp_path, ident, {}, records())


def test_part_files_of_a_killed_run_become_an_interrupted_run(tmp_path):
    recs = records()
    writer = partfiles.RunWriter(tmp_path, identity(), {"status": "interrupted", "started_at": "t0"})
    writer.flush(recs[:1])
    writer.flush(recs[:1])  # nothing new: no new part
    parts = sorted(p.name for p in tmp_path.rglob("*.part-*.parquet"))
    assert parts == ["20260101T000000Z-abc123.chunks.part-0001.parquet",
                     "20260101T000000Z-abc123.requests.part-0001.parquet"]
    assert store.read_table(tmp_path, "requests").is_empty()  # readers see finished runs only
    writer.flush(recs)
    assert partfiles.recover(tmp_path) == ["20260101T000000Z-abc123"]
    assert not list(tmp_path.rglob("*.part-*"))
    run = store.read_table(tmp_path, "run")
    assert run["status"].to_list() == ["interrupted"] and run["n_requests"][0] == 2
    assert "2 measured requests kept" in run["error"][0]
    req = store.read_table(tmp_path, "requests")
    assert req["request_index"].to_list() == [0, 1] and set(req["machine_id"]) == {"m-1"}
    assert store.read_table(tmp_path, "chunks").height == 4
    assert partfiles.recover(tmp_path) == []


def test_a_recovered_run_stores_the_rows_a_finished_run_stores(tmp_path):
    """Chunk parts leave the identity out (it is most of a chunk row's cost); recovery puts it back,
    so a killed run's tables hold what write_run would have written for the same records."""
    recs = records()
    writer = partfiles.RunWriter(tmp_path / "killed", identity(), {"status": "interrupted"})
    writer.flush(recs[:1])
    writer.flush(recs)
    assert partfiles.recover(tmp_path / "killed") == ["20260101T000000Z-abc123"]
    store.write_run(tmp_path / "finished", identity(), {"status": "complete"}, recs)
    for table in ("requests", "chunks"):
        killed, finished = (store.read_table(tmp_path / where, table) for where in ("killed", "finished"))
        assert killed.height > 0 and killed.equals(finished), table
    assert store.read_table(tmp_path / "killed", "chunks")["machine_id"].to_list() == ["m-1"] * 4


def test_a_finished_run_removes_its_part_files(tmp_path):
    writer = partfiles.RunWriter(tmp_path, identity(), {})
    writer.flush(records())
    store.write_run(tmp_path, identity(), {"status": "complete"}, records())
    assert not list(tmp_path.rglob("*.part-*")) and partfiles.recover(tmp_path) == []


def test_files_of_schema_1_read_with_the_new_columns_null(tmp_path):
    old = identity()
    for key in ("machine_id", "series_id", "trial"):
        del old[key]
    folder = tmp_path / "hw"
    folder.mkdir()
    import pyarrow as pa
    table = pa.Table.from_pylist([{**old, "status": "complete"}],
                                 schema=store.schema_for("run", 1).remove_metadata())
    pq.write_table(table, folder / "x.run.parquet")
    run = store.read_table(tmp_path, "run")
    assert run["machine_id"].to_list() == [None] and run["trial"].to_list() == [None]
    assert "measured_s" in run.columns


def test_empty_store_reads_as_empty_frames(tmp_path):
    assert store.read_table(tmp_path, "requests").is_empty()
    assert "ttft" not in store.read_table(tmp_path, "requests").columns
    assert partfiles.recover(tmp_path) == []


def test_cold_start_and_placement_are_columns_and_older_runs_still_read(tmp_path):
    from gaplab.report import cold_start, speed, speed_prose

    meta = {"status": "complete", "server_started_ns": 1_000_000_000, "server_healthy_ns": 3_500_000_000,
            "server_first_token_ns": 3_600_000_000, "model_bytes_loaded": 2**30, "model_bytes_gpu": 2**29,
            "server_loaded_ns": 3_550_000_000, "engine_version": "llama.cpp b10488"}
    store.write_run(tmp_path, identity(), meta, records())  # keys as measure.run_meta and run_trial set them
    run = store.read_table(tmp_path, "run")
    assert run["server_healthy_ns"][0] == 3_500_000_000 and run["model_bytes_gpu"][0] == 2**29
    # a schema-3 run keeps these only in meta_json: the readers fall back to it
    meta = {"server": {"started_ns": 10**10, "healthy_ns": 10**10 + 4 * 10**9, "first_token_ns": 10**10 + 5 * 10**9},
            "ollama_placement": {"after": {"size": 2**31, "size_vram": 2**29}}}
    old = run.drop(list(store.ADDED[4])).with_columns(
        schema_version=pl.lit(3, dtype=pl.Int32), run_id=pl.lit("20260101T000001Z-old000"),
        cell_id=pl.lit("rt/m/Q4/w/c2"), quant=pl.lit("Q4"), meta_json=pl.lit(json.dumps(meta)))
    folder = tmp_path / "hw" / "rt" / "m" / "Q4" / "2026-01-01"
    folder.mkdir(parents=True)
    old.write_parquet(folder / "20260101T000001Z-old000.run.parquet")
    starts = cold_start.cold_starts(tmp_path).sort("quant")
    assert starts["quant"].to_list() == ["Q4", "Q8_0"]
    assert starts["to_healthy_s"].to_list() == [4.0, 2.5] and starts["to_first_token_s"].to_list() == [5.0, 2.6]
    # the model's load: its own moment where stored (schema 8), else when the server was healthy
    assert starts["to_loaded_s"].to_list() == [4.0, 2.55]
    none = pl.DataFrame(schema={c: pl.String for c in ("metric", "runtime", "quant", "model", "hardware", "source")})
    table = cold_start.cold_start_table(starts, none.with_columns(value=pl.lit(None, pl.Float64)))
    assert table.group_by("label").agg("phase").sort("label")["phase"].to_list() == [
        ["healthy", "first token"], ["healthy", "model loaded", "first token"]]  # a bar only where it differs
    assert run["engine_version"][0] == "llama.cpp b10488"
    story = speed_prose.placement_story(speed.runs(tmp_path))
    assert "50% of 1.0 GiB in GPU memory" in story and "25% of 2.0 GiB in GPU memory" in story


def test_a_table_is_parsed_once_until_a_run_is_added(tmp_path):
    store.write_run(tmp_path, identity(), {"status": "complete"}, records())
    first = store.read_table(tmp_path, "requests")
    assert store.read_table(tmp_path, "requests") is first  # unchanged files: the same frame
    store.write_run(tmp_path, identity("20260101T000009Z-def456"), {"status": "complete"}, records())
    again = store.read_table(tmp_path, "requests")
    assert again.height == 2 * first.height and set(again["run_id"]) == {"20260101T000000Z-abc123",
                                                                          "20260101T000009Z-def456"}


def test_a_column_a_schema_version_added_belongs_to_one_table_or_to_the_identity():
    # schema_for drops a later version's columns by name: a name shared by two tables would
    # drop one table's older column from the other's contract
    for version, names in store.ADDED.items():
        for name in names - set(store.IDENTITY.names):
            holders = [t for t, schema in store.TABLES.items() if name in schema.names]
            assert len(holders) == 1, f"schema {version} column {name} is in {holders}"


def test_a_bandwidth_measurement_is_stored_as_a_run_of_the_machine(tmp_path):
    import os

    from gaplab.machine import bandwidth
    rows = bandwidth.record(tmp_path, "s")
    assert {(r["repeat"], r["threads_used"]) for r in rows if r["device"] == "cpu"} == {(k, t) for k in (1, 2) for t in {1, os.cpu_count()}}
    stored = store.read_table(tmp_path, "bandwidth")
    assert stored.height == len(rows) and set(stored["runtime"]) == {"stream-triad"}
    assert (stored["gb_s"] > 0.1).all() and stored["machine_id"].null_count() == 0
    assert "thread" in bandwidth.summary(rows)


def test_a_failed_requests_kind_is_stored_as_named_and_older_rows_get_theirs_guessed(tmp_path):
    from gaplab.analysis.metrics import trial_summary as summary
    from gaplab.analysis.metrics import with_latencies, with_run_keys

    def trial_summary(rows):
        return summary(with_latencies(with_run_keys(rows)))

    recs = records()
    recs[1].fail("refused", "ClientConnectorError: could not connect")  # words the guess would call "other"
    store.write_run(tmp_path, identity(), {"status": "complete"}, recs)
    req = store.read_table(tmp_path, "requests")
    assert req.filter(pl.col("request_index") == 1)["error_kind"].to_list() == ["refused"]
    assert trial_summary(req)["error_kinds"].to_list() == [["refused"]]
    older = req.with_columns(pl.lit(None, pl.String).alias("error_kind"))  # a file before schema 11
    assert trial_summary(older)["error_kinds"].to_list() == [["other"]]
    assert trial_summary(req.drop("error_kind"))["error_kinds"].to_list() == [["other"]]
