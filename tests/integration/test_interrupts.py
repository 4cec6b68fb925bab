"""Nothing finished is lost: a measurement killed with SIGKILL keeps what it had finished up to
one flush interval before the kill; Ctrl-C ends a sweep or a run with one line, exit code 130, and the
interrupted trial stored. Real llama-server, real papermill kernel."""

import os
import signal
import subprocess
import time

import polars as pl
import psutil
import pytest
from conftest import write_scenario

from gaplab.storage import partfiles, store

pytestmark = pytest.mark.slow

BATCH = {"name": "batch", "kind": "llamacpp", "parallel": 2}


def _wait_for(path_glob, tmp, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(tmp.rglob(path_glob))
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {path_glob} under {tmp} within {timeout} s")


def test_sigkill_loses_at_most_the_last_flush_interval(llama_ready, tmp_path, gaplab_cli):
    path = write_scenario(tmp_path, BATCH, (16, 24), {"concurrency": [1], "requests": 1000, "min_seconds": 60,
                                                       "max_seconds": 60, "warmup": 0, "flush_seconds": 1.0})
    raw = tmp_path / "raw"
    proc = subprocess.Popen([*gaplab_cli, "run", str(path), "--data-dir", str(raw)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for("*.requests.part-*.parquet", tmp_path)
        time.sleep(4)
    finally:
        killed_ns = time.perf_counter_ns()  # the child stamps with the same monotonic clock
        # the command and the notebook kernel measuring under it, in a session of its own
        kernels = [p for p in psutil.Process(proc.pid).children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
        os.killpg(proc.pid, signal.SIGKILL)
        for kernel in kernels:
            kernel.kill()
        proc.wait()
        psutil.wait_procs(kernels, timeout=10)
    assert len(kernels) == 1  # gaplab run measures in the measure notebook's kernel
    assert not list(raw.rglob("*.run.parquet"))  # nothing had ended the run
    assert len(partfiles.recover(raw)) == 1
    run = store.read_table(raw, "run").row(0, named=True)
    assert run["status"] == "interrupted" and "measured requests kept" in run["error"]
    req = store.read_table(raw, "requests").filter(pl.col("error").is_null())
    assert req.height >= 2, "finished requests were lost"  # 4 s of requests; a loaded machine finishes few
    # the newest kept request ended within a flush interval (1 s) plus one request of the kill
    assert (killed_ns - req["end_ns"].max()) / 1e9 < 2.5
    assert not list(raw.rglob("*.part-*.parquet"))


def test_ctrl_c_ends_a_sweep_with_one_line_and_keeps_the_trial(llama_ready, tmp_path, gaplab_cli):
    path = write_scenario(tmp_path, BATCH, (16, 24), {"concurrency": [1, 2], "requests": 1000, "min_seconds": 60,
                                                       "max_seconds": 60, "warmup": 0, "flush_seconds": 1.0,
                                                       "trials": 1, "max_trials": 1})
    raw = tmp_path / "raw"
    proc = subprocess.Popen([*gaplab_cli, "sweep", str(path), "--data-dir", str(raw)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for("*.requests.part-*.parquet", tmp_path)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err and "zmq" not in err, err
    assert err.strip().count("\n") == 0 and "interrupted after 0 trials" in err and "to resume" in err, err
    run = store.read_table(raw, "run").row(0, named=True)
    assert run["status"] == "interrupted" and run["n_requests"] >= 2
    assert not list(raw.rglob("*.part-*.parquet"))
    listed = subprocess.run([*gaplab_cli, "sweep", str(path), "--list", "--data-dir", str(raw)],
                            capture_output=True, text=True).stdout
    assert listed.count("needs trials: 0 trials") == 2  # the interrupted trial does not count


def test_ctrl_c_ends_a_run_with_one_line_and_leaves_no_server(llama_ready, tmp_path, gaplab_cli):
    """The terminal's Ctrl-C reaches `gaplab run` alone (its kernel has a session of its own): it is
    passed on to the trial, which stores what it measured and stops its server."""
    path = write_scenario(tmp_path, BATCH, (16, 24), {"concurrency": [1], "requests": 1000, "min_seconds": 60,
                                                       "max_seconds": 60, "warmup": 0, "flush_seconds": 1.0})
    raw = tmp_path / "raw"
    proc = subprocess.Popen([*gaplab_cli, "run", str(path), "--data-dir", str(raw)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for("*.requests.part-*.parquet", tmp_path)
    servers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "llama-server"]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and err.strip().count("\n") == 0 and "interrupted" in err, err
    assert len(servers) == 1 and not psutil.wait_procs(servers, timeout=10)[1]
    run = store.read_table(raw, "run").row(0, named=True)
    assert run["status"] == "interrupted" and run["n_requests"] >= 2
    assert not list(raw.rglob("*.part-*.parquet"))
