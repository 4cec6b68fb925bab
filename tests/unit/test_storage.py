"""The store's file operations on a URL root, through fsspec's in-process memory file system
(the S3 path is tested against a real S3-compatible server in tests/integration/test_shared_store.py)."""

import secrets
from pathlib import Path

import fsspec
import polars as pl
import pytest
from test_store import identity, records  # noqa: E402

from gaplab.spec.config import RAW_DIR
from gaplab.storage import backend, partfiles, store


@pytest.fixture
def memory_root():
    """A fresh folder per test: store.read_table keeps a URL's frame while its file names are
    the same, and these tests reuse run ids."""
    folder = f"gaplab-{secrets.token_hex(4)}"
    yield f"memory://{folder}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{folder}"):
        fs.rm(f"/{folder}", recursive=True)


@pytest.mark.parametrize("given, root", [
    ("", RAW_DIR), (None, RAW_DIR), ("data/raw", Path("data/raw")), ("file:///srv/shared", Path("/srv/shared")),
    ("s3://bucket/study/", "s3://bucket/study"), ("gs://b", "gs://b"), (Path("/x"), Path("/x")),
])
def test_location_keeps_urls_as_text_and_folders_as_paths(given, root):
    assert backend.location(given) == root


def test_a_run_at_a_url_is_written_listed_and_read_like_a_local_one(memory_root, tmp_path):
    at_url = store.write_run(memory_root, identity(), {"status": "complete"}, records())
    local = store.write_run(tmp_path, identity(), {"status": "complete"}, records())
    assert at_url == f"{memory_root}/hw/rt/m/Q8_0/2026-01-01/20260101T000000Z-abc123.run.parquet"
    assert [backend.name(p) for p in backend.glob(memory_root, "**/*.parquet")] == sorted(
        p.name for p in local.parent.iterdir())
    for name in ("run", "requests", "chunks"):
        assert store.read_table(memory_root, name).equals(store.read_table(tmp_path, name))
    with pytest.raises(FileExistsError):  # runs stay immutable at a URL too
        store.write_run(memory_root, identity(), {"status": "complete"}, records())


def test_a_url_scan_pushes_the_filter_and_selection_down(memory_root):
    store.write_run(memory_root, identity(), {"status": "complete"}, records())
    store.write_run(memory_root, identity("20260102T000000Z-def456", machine_id="m-2"), {"status": "complete"},
                    records())
    lazy = store.scan_table(memory_root, "requests").filter(pl.col("machine_id") == "m-2").select("run_id", "error")
    got = lazy.collect()
    assert got.columns == ["run_id", "error"] and set(got["run_id"]) == {"20260102T000000Z-def456"}
    assert got.height == 2


def test_a_killed_run_at_a_url_is_recovered(memory_root):
    writer = partfiles.RunWriter(memory_root, identity(), {"status": "interrupted"})
    writer.flush(records())
    assert len(backend.glob(memory_root, "**/*.part-*.parquet")) == 2
    assert partfiles.recover(memory_root) == ["20260101T000000Z-abc123"]
    assert store.read_table(memory_root, "run")["status"].to_list() == ["interrupted"]
    assert not backend.glob(memory_root, "**/*.part-*.parquet")


def test_a_part_file_of_a_run_written_elsewhere_is_dropped_not_recovered(tmp_path):
    store.write_run(tmp_path, identity(hardware_id="other"), {"status": "complete"}, records())
    writer = partfiles.RunWriter(tmp_path, identity(), {"status": "interrupted"})  # the same run id, another folder
    writer.flush(records())
    assert partfiles.recover(tmp_path) == []
    assert store.read_table(tmp_path, "run").height == 1 and not list(tmp_path.rglob("*.part-*"))


def test_check_accepts_a_writable_url_and_names_what_is_missing(memory_root):
    backend.check(memory_root)
    with pytest.raises(ValueError, match=r"^--data-dir: nope://x: no file system is known for nope://"):
        backend.check("nope://x")
