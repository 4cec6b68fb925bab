"""Where the store lives: a local folder, or a URL that fsspec knows (s3://bucket/prefix,
gs://..., az://..., file://..., a shared file system by its mount path).

store.py asks this module for every file operation, so the layout and the tables are the
same wherever the files sit, and runs written by many machines merge by being written side
by side. A local root is a Path (atomic writes by rename); a URL root stays a string, and
its files are written in one PUT each, which object stores make visible whole or not at all.

Credentials come from the file system library's own environment and configuration (for S3:
AWS_ACCESS_KEY_ID / AWS_PROFILE / ~/.aws, AWS_ENDPOINT_URL for an S3-compatible server);
gaplab never reads or stores them. `check` opens the root once, so a missing package, an
unknown scheme or refused credentials end a command in one line before anything is measured.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeGuard

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

Root = Path | str  # a local folder, or a URL
# the package each common scheme's file system comes in
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "adl": "adlfs", "hf": "huggingface_hub"}


def location(data_dir: str | Path | None, default: Path | None = None) -> Root:
    """The store root named by a --data-dir or a notebook's data_dir: a Path for a local folder
    (file:// included), the URL itself (no trailing slash) for anything else; empty: default."""
    text = str(data_dir) if data_dir not in (None, "") else ""
    if not text:
        if default is None:
            from gaplab.spec.config import RAW_DIR
            default = RAW_DIR
        return Path(default)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    scheme, sep, rest = text.partition("://")
    if sep and not rest.strip("/"):
        raise ValueError(f"--data-dir: {text} names no bucket or folder; give one, e.g. {scheme}://bucket/study")
    if not sep and re.match(r"^[A-Za-z][\w+.-]+:/?[^/]", text):  # s3:/bucket, s3:bucket
        fixed = re.sub(r"^([^:]+):/?", r"\1://", text)
        raise ValueError(f"--data-dir: {text} is not a URL; did you mean {fixed}?")
    return text.rstrip("/") if sep else Path(text)


def is_url(root: Root) -> TypeGuard[str]:
    return isinstance(root, str) and "://" in root


def filesystem(url: str):
    """The fsspec file system of a URL, or a one-line ValueError saying what to install. Its
    cached listings are dropped: other processes and machines add files to the store."""
    import fsspec

    scheme = url.split("://", 1)[0]
    if scheme not in fsspec.available_protocols():
        raise ValueError(f"--data-dir: {url}: no file system is known for {scheme}://; use a local folder, "
                         f"s3://, gs://, az:// or another scheme fsspec lists (fsspec.available_protocols())")
    try:
        fs = fsspec.filesystem(scheme)
    except ImportError:
        package = PACKAGES.get(scheme, "the package fsspec names for it")
        raise ValueError(f"--data-dir: {url}: {scheme}:// needs the package {package}; install it "
                         f"(pip install {package}) or use a local folder") from None
    except Exception as exc:  # a scheme that needs arguments or a native library (hdfs, zip, ...)
        raise ValueError(f"--data-dir: {url}: {scheme}:// cannot be opened as a store ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:150]}); use a local folder, s3://, gs:// or az://") from None
    fs.invalidate_cache()
    return fs


def _path(url: str) -> str:
    """A URL as its file system's path (the bucket and key, without the scheme)."""
    return url.split("://", 1)[1]


def check(root: Root, write: bool = True) -> None:
    """Open the store once: a URL's file system must be installed and answer, and with write let
    us write (a probe object, removed); without, list the root (a report of a read-only bucket)."""
    if not is_url(root):
        return
    fs = filesystem(root)
    probe = f"{_path(root)}/.gaplab-write-check-{os.getpid()}"
    try:
        if write:
            fs.pipe_file(probe, b"ok")
            fs.rm_file(probe)
        elif not fs.exists(_path(root)):
            raise FileNotFoundError(f"{root} does not exist")
    except Exception as exc:  # each library raises its own kinds; the message says which
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        hint = ("create the bucket (or folder) first, or fix the URL" if isinstance(exc, FileNotFoundError) else
                "set the library's credentials in its usual environment or config (for S3: AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials; AWS_ENDPOINT_URL for an "
                "S3-compatible server)")
        raise ValueError(f"--data-dir: cannot {'write to' if write else 'read'} {root} ({type(exc).__name__}: "
                         f"{why}); {hint}") from None


def join(root: Root, *parts: str) -> Root:
    if is_url(root):
        return "/".join([root.rstrip("/"), *parts])
    return Path(root, *parts)


def glob(root: Root, pattern: str) -> list[Root]:
    """Files below root matching pattern (e.g. '**/*.run.parquet'), sorted."""
    if not is_url(root):
        return sorted(Path(root).glob(pattern))
    fs = filesystem(root)
    scheme = root.split("://", 1)[0]
    return sorted(f"{scheme}://{p}" for p in fs.glob(f"{_path(root)}/{pattern}"))


def name(path: Root) -> str:
    return path.rsplit("/", 1)[-1] if is_url(path) else Path(path).name


def parent(path: Root) -> Root:
    return path.rsplit("/", 1)[0] if is_url(path) else Path(path).parent


def exists(path: Root) -> bool:
    return filesystem(path).exists(_path(path)) if is_url(path) else Path(path).exists()


def remove(path: Root) -> None:
    if not is_url(path):
        Path(path).unlink(missing_ok=True)
    else:
        fs = filesystem(path)
        if fs.exists(_path(path)):
            fs.rm_file(_path(path))


def write_parquet(table: pa.Table, path: Root) -> None:
    """Write a table whole: a local file under a temporary name, then renamed, so a crash never
    leaves half a file; an object in one PUT."""
    # dictionaries for the text columns only: on timestamps and indices, where nearly every value
    # differs, building one doubled the cost of writing a chunk row and saved nothing
    options = {"compression": "zstd", "use_dictionary": [f.name for f in table.schema if pa.types.is_string(f.type)]}
    if not is_url(path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp, **options)
        os.replace(tmp, path)
        return
    fs = filesystem(path)
    with fs.open(_path(path), "wb") as f:
        pq.write_table(table, f, **options)


def read_parquet(path: Root) -> pa.Table:
    if not is_url(path):
        return pq.read_table(path)
    with filesystem(path).open(_path(path), "rb") as f:
        return pq.read_table(f)


def scan(files: list[Root], schema: pa.Schema) -> pl.LazyFrame:
    """The files as one lazy frame in `schema`: columns a file lacks read as null, extra ones are
    dropped, and filters and column selections reach the files (row groups are skipped by their
    statistics). Local files go through polars' own reader; URLs through a pyarrow dataset on
    the fsspec file system, so they use that library's credentials."""
    empty = pl.from_arrow(schema.empty_table())
    assert isinstance(empty, pl.DataFrame)  # a Table converts to a frame (a Series only from an array)
    if not files:
        return pl.LazyFrame(schema=empty.schema)
    if not is_url(files[0]):
        return pl.scan_parquet([Path(f) for f in files], schema=empty.schema,
                               missing_columns="insert", extra_columns="ignore")
    import pyarrow.dataset as ds

    fs = filesystem(files[0])
    return pl.scan_pyarrow_dataset(ds.dataset([_path(str(f)) for f in files], schema=schema, format="parquet",
                                              filesystem=fs))


def signature(files: list[Root]) -> tuple:
    """What changes when a set of files changes: local files by size and mtime; a URL store's
    files by name (they are immutable once written)."""
    if files and not is_url(files[0]):
        return tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [Path(f).stat()])
    return tuple(files)
