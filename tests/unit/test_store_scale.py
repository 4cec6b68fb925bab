"""The report's lazy path (speed.scan_requests, then metrics.trial_summary and speed.cell_summary)
on a small store written by bench/store_scale.py's generator: the same figures as reading
every file eagerly, figures right against numpy, and only what the summary uses is read."""

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from gaplab.analysis import metrics
from gaplab.report import speed
from gaplab.storage import store

BENCH = Path(__file__).resolve().parents[2] / "bench" / "store_scale.py"
_spec = importlib.util.spec_from_file_location("store_scale", BENCH)
store_scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store_scale)
CELLS = store_scale.cells()[:6]
PLAN = store_scale.plan(24, CELLS)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """24 runs of 200 requests: 6 cells on 3 machines, 4 runs each; the first cell's first run is
    an older series and one of its trials was interrupted: the report leaves both out."""
    folder = tmp_path_factory.mktemp("raw")
    store_scale.generate(folder, n_runs=24, rows=200, jobs=1, cs=CELLS)
    return folder


def by_key(frame):
    return frame.sort("machine_id", "cell_key", "run_id" if "run_id" in frame.columns else "cell_key")


def test_lazy_summary_equals_the_eager_one(raw):
    lazy = speed.cell_summary(speed.scan_requests(raw))
    eager = speed.cell_summary(store_scale.eager_requests(raw))
    assert lazy.height == 6 and lazy["machine_id"].n_unique() == 3
    assert sorted(lazy["trials"].to_list()) == [2, 4, 4, 4, 4, 4]
    kept = [r for r in PLAN if r["status"] == "complete" and "-new" in r["series_id"]]
    assert len(kept) == 22 and int(lazy["requests"].sum()) == sum(200 - r["concurrency"] for r in kept)  # no warmup
    assert_frame_equal(by_key(lazy), by_key(eager), rel_tol=1e-9)
    # and the per-request frame the pages read is the scan, collected
    assert_frame_equal(speed.measured_requests(raw), store_scale.eager_requests(raw).select(
        speed.measured_requests(raw).columns), check_row_order=False)


def test_trial_figures_against_numpy(raw):
    """Each trial's figures, recomputed from its own file with numpy, so a pass of trial_summary
    that joined the wrong run or lost a filter shows here."""
    trials = metrics.trial_summary(speed.scan_requests(raw))
    assert trials.height == 22
    for t in trials.iter_rows(named=True):
        f = next(raw.glob(f"**/{t['run_id']}.requests.parquet"))
        r = pl.read_parquet(f).filter(~pl.col("warmup"))
        ok = r.filter(pl.col("error").is_null())
        ttft = ((ok["first_token_ns"] - ok["sent_ns"]) / 1e6).to_numpy()
        span = (r["end_ns"].max() - r["sent_ns"].min()) / 1e9
        assert t["requests"] == r.height and t["errors"] == r.height - ok.height
        assert sorted(t["error_messages"]) == sorted(r["error"].drop_nulls().to_list())
        assert t["ttft_p50_ms"] == pytest.approx(np.percentile(ttft, 50))
        assert t["ttft_p99_ms"] == pytest.approx(np.percentile(ttft, 99))
        assert t["e2e_p50_ms"] == pytest.approx(np.percentile(((ok["end_ns"] - ok["sent_ns"]) / 1e6).to_numpy(), 50))
        assert t["queue_p99_ms"] == pytest.approx(np.percentile(((r["sent_ns"] - r["scheduled_ns"]) / 1e6).to_numpy(), 99))
        assert t["aggregate_tok_s"] == pytest.approx(ok["completion_tokens"].sum() / span)
        assert (t["machine_id"], t["cell_key"], t["trial"]) == (r["machine_id"][0], r["cell_key"][0], r["trial"][0])


def _spoil(path, column):
    """Overwrite the bytes of one column's data in a file (its footer kept): reading that column
    of that file now fails, so a summary that succeeds never read it."""
    rg = pq.ParquetFile(path).metadata.row_group(0)
    c = next(rg.column(j) for j in range(rg.num_columns) if rg.column(j).path_in_schema == column)
    start = c.dictionary_page_offset or c.data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + c.total_compressed_size] = b"\xff" * c.total_compressed_size
    path.write_bytes(bytes(data))


def test_the_summary_reads_only_the_columns_it_uses(raw, tmp_path):
    import shutil

    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    for f in copy.glob("**/*.requests.parquet"):
        _spoil(f, "output_chars")  # a column no summary uses
    with pytest.raises(pl.exceptions.ComputeError):
        store.scan_table(copy, "requests").collect()  # read whole, the scan meets it
    assert_frame_equal(by_key(speed.cell_summary(speed.scan_requests(copy))),
                       by_key(speed.cell_summary(speed.scan_requests(raw))), rel_tol=1e-9)


def test_the_summary_reads_only_the_files_of_its_runs(raw, tmp_path):
    """The runs are picked by a filter the scan receives: a file of another machine's run is
    skipped by its statistics (one run_id per file), its data never decoded."""
    import shutil

    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    runs = store.read_table(copy, "run")
    spoiled = runs["machine_id"][0]
    for run_id in runs.filter(pl.col("machine_id") == spoiled)["run_id"]:
        _spoil(next(copy.glob(f"**/{run_id}.requests.parquet")), "sent_ns")  # a column the summary uses
    for m in set(runs["machine_id"]) - {spoiled}:
        assert speed.cell_summary(speed.scan_requests(copy, m)).height == 2
    with pytest.raises(pl.exceptions.ComputeError):
        speed.cell_summary(speed.scan_requests(copy, spoiled))
