"""The run record's typed settings: what a run writes as columns (schema 12), and the same
settings read from meta_json for a run stored before them."""

import polars as pl
import pytest

from gaplab.measure.records import RequestRecord
from gaplab.storage import run_record, store

SLO = [{"metric": "ttft", "max_ms": 800.0, "percentile": 95.0}]
FLAGS = {"parallel": 4, "kv_unified": True, "extra_args": ["--no-warmup"], "extra_body": {"top_k": 1},
         "prefix_cache": False}
META = {"status": "complete", "cell": {"flags": FLAGS},
        "load": {"slo": SLO, "max_lag_ms": 25.0, "equivalence_margin": 0.03},
        "guard": {"cut_requests": 2, "dropped_errors": 7}}


def _write(raw, run_id, meta):
    ident = {"run_id": run_id, "cell_id": "c", "cell_key": "k", "scenario": "s", "hardware_id": "hw",
             "machine_id": "m", "series_id": "s1", "trial": 1, "runtime": "rt", "runtime_kind": "llamacpp",
             "runtime_version": "v", "model": "m", "quant": "Q8_0", "workload": "w", "concurrency": 1,
             "threads": 1, "parallel": 4}
    rec = RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0, sent_ns=1, end_ns=2)
    return store.write_run(raw, ident, meta, [rec])


def test_a_run_writes_its_settings_as_typed_columns(tmp_path):
    _write(tmp_path, "20260101T000000Z-aaaaaa", META)
    row = store.read_table(tmp_path, "run").row(0, named=True)
    assert row["schema_version"] == store.SCHEMA_VERSION >= run_record.VERSION
    assert row["slo"] == [{"metric": "ttft", "percentile": 95.0, "max_ms": 800.0}]
    assert (row["max_lag_ms"], row["equivalence_margin"], row["cut_requests"], row["dropped_errors"]) == (25.0, 0.03, 2, 7)
    assert [f["name"] for f in row["flags"]] == sorted(FLAGS)
    assert run_record.flag_values(row["flags"]) == FLAGS  # each value keeps its type


def test_an_older_run_reads_the_same_settings_from_its_metadata(tmp_path):
    _write(tmp_path, "20260101T000000Z-aaaaaa", META)
    older = _write(tmp_path, "20260101T000000Z-bbbbbb", META)
    # as schema 11 wrote it: no typed columns, the settings only inside meta_json
    frame = pl.read_parquet(older).drop(run_record.NAMES).with_columns(schema_version=pl.lit(11, pl.Int32))
    frame.write_parquet(older)
    got = run_record.settings(store.read_table(tmp_path, "run")).sort("run_id")
    assert got["run_id"].to_list() == ["20260101T000000Z-aaaaaa", "20260101T000000Z-bbbbbb"]
    assert got.drop("run_id").row(0) == got.drop("run_id").row(1)
    assert got["max_lag_ms"][1] == 25.0 and got["slo"][1].to_list()[0]["max_ms"] == 800.0


def test_defaults_where_a_run_recorded_no_settings(tmp_path):
    _write(tmp_path, "20260101T000000Z-cccccc", {"status": "complete"})
    got = run_record.settings(store.read_table(tmp_path, "run")).row(0, named=True)
    assert got["max_lag_ms"] == pytest.approx(run_record.LAG_MS)
    assert got["slo"] == [] and got["flags"] == [] and got["equivalence_margin"] is None
