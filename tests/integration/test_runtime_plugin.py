"""A runtime gaplab starts, added by one module and registered by no edit of gaplab: the module
below (a tiny engine, tests/support/sse_server.py, started as a process) is installed the way a
distribution would be (a .dist-info folder naming it under the `gaplab.runtimes` entry points),
and `gaplab sweep` measures it, its own scenario field checked and part of its cells' identity."""

import os
import subprocess
from pathlib import Path

import polars as pl
import yaml

from gaplab.storage import store

ENGINE = Path(__file__).resolve().parents[1] / "support" / "sse_server.py"
OUTPUT = 16

MODULE = f'''
"""Echo: an engine that streams one word per step, started by gaplab."""
import subprocess
import sys
from contextlib import contextmanager

from gaplab.runtimes import Fields, RuntimeKind, Server, process


class EchoFields(Fields):
    step_ms: float = 2.0  # the engine's time per output token


@contextmanager
def start(cell, api_key):
    port = process.free_port()
    cmd = [sys.executable, {str(ENGINE)!r}, str(port), "0.005", str(cell.runtime.options.step_ms / 1e3), "{OUTPUT}"]
    proc = process.start(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{{port}}"
        healthy = process.wait_healthy(base, proc, 30, "echo.log", path="/v1/models")
        yield Server(base_url=base + "/v1", served_model=cell.model.name, runtime_version="echo 1.0", engine="echo",
                     launch_command=" ".join(cmd), pid=proc.pid, started_ns=healthy, healthy_ns=healthy)
    finally:
        proc.stop()


KIND = RuntimeKind("echo", starts=True, attaches=False, quick=True, open=start, fields=EchoFields, display="Echo",
                   identity_flags=lambda runtime: {{"step_ms": runtime.options.step_ms, "threads": runtime.threads}})
'''


def _install(folder: Path) -> dict:
    """The module and its distribution's metadata on PYTHONPATH: what `pip install` of it would leave."""
    (folder / "gaplab_echo.py").write_text(MODULE)
    info = folder / "gaplab_echo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gaplab-echo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gaplab.runtimes]\necho = gaplab_echo:KIND\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def _scenario(folder: Path, runtimes: list[dict]) -> Path:
    path = folder / "echo.yaml"
    path.write_text(yaml.safe_dump({
        "name": "echo", "runtimes": runtimes, "models": [{"name": "tiny", "api": "chat", "quants": ["F16"]}],
        "workloads": [{"name": "p16-o16", "prompt_tokens": 16, "output_tokens": OUTPUT}],
        "load": {"concurrency": [1, 2], "requests": 4, "min_seconds": 0.5, "max_seconds": 20, "warmup": 1,
                 "trials": 2, "max_trials": 2}}))
    return path


def test_a_runtime_added_by_one_module_is_measured(tmp_path, gaplab_cli):
    env = _install(tmp_path)
    raw = tmp_path / "raw"
    path = _scenario(tmp_path, [{"name": "echo-fast", "kind": "echo", "step_ms": 2},
                                {"name": "echo-slow", "kind": "echo", "step_ms": 8}])
    done = subprocess.run([*gaplab_cli, "sweep", str(path), "--data-dir", str(raw)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = store.read_table(raw, "run")
    assert set(runs["runtime_kind"]) == {"echo"} and (runs["status"] == "complete").all()
    assert runs.height == 8  # 2 runtimes x 2 concurrencies x 2 trials
    flags = {r["runtime"]: r["cell_key"] for r in runs.iter_rows(named=True)}
    assert flags["echo-fast"] != flags["echo-slow"]  # its own field is part of the cell's identity
    req = store.read_table(raw, "requests").filter(~pl.col("warmup"))
    assert (req["completion_tokens"] == OUTPUT).all() and req["error"].is_null().all()
    gap_ms = req.join(runs.select("run_id", "runtime"), on="run_id").group_by("runtime").agg(
        ((pl.col("last_token_ns") - pl.col("first_token_ns")) / (OUTPUT - 1) / 1e6).median().alias("ms"))
    by = dict(zip(gap_ms["runtime"], gap_ms["ms"]))
    assert by["echo-slow"] > 2 * by["echo-fast"]  # the field reached the engine: 8 ms steps against 2


def test_a_kinds_own_field_is_refused_on_another_kind_in_one_line(tmp_path, gaplab_cli):
    env = _install(tmp_path)
    path = _scenario(tmp_path, [{"name": "llama", "kind": "llamacpp", "step_ms": 2}])
    done = subprocess.run([*gaplab_cli, "sweep", str(path), "--list"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "step_ms: a field of kind 'echo', not of 'llamacpp'; remove it" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
