"""A launched server that dies mid-sweep is noticed: its trial stops within a second and is stored
as failed with the signal and the server's last log lines, the server is started again (recorded
as a restart), the cell's next trial is measured, and the closing lines say "1 failed". Real
llama-server killed with SIGKILL during a real `gaplab sweep`."""

import json
import os
import signal
import subprocess
import time

import polars as pl
import psutil
import pytest
from conftest import write_scenario

from gaplab.storage import store

pytestmark = pytest.mark.slow

USERS = (1, 2)


def _llama_servers(parent: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(parent).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in kids if p.name() == "llama-server"]


def test_a_killed_server_fails_one_trial_and_is_started_again(llama_ready, tmp_path, gaplab_cli):
    path = write_scenario(tmp_path, {"name": "one", "kind": "llamacpp", "parallel": 2}, (16, 24),
                          {"concurrency": list(USERS), "requests": 6, "min_seconds": 3, "max_seconds": 6,
                           "warmup": 1, "trials": 2, "max_trials": 2, "precision": 0, "keep_servers": True,
                           "flush_seconds": 0.5})
    raw = tmp_path / "raw"
    proc = subprocess.Popen([*gaplab_cli, "sweep", str(path), "--data-dir", str(raw)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(raw.rglob("*.requests.part-*.parquet")):  # the first trial is sending
            assert time.monotonic() < deadline and proc.poll() is None, "the first trial never started"
            time.sleep(0.1)
        time.sleep(1.0)
        servers = _llama_servers(proc.pid)
        assert len(servers) == 1
        victim = servers[0].pid
        killed_ns = time.perf_counter_ns()  # the trial's rows use the same monotonic clock
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err  # something failed, and it is stored
    assert ", 1 failed" in out and "4 trials in 3 rounds" in out, out
    assert "Traceback" not in err, err

    runs = store.read_table(raw, "run").sort("run_id")
    failed = runs.filter(pl.col("status") == "failed")
    assert failed.height == 1, runs.select("cell_id", "trial", "status", "error")
    error = failed["error"][0]
    assert f"process {victim} was killed by signal 9 (SIGKILL)" in error and "its log ends:" in error, error
    # every cell still got its two complete trials, on a server started again once
    complete = runs.filter(pl.col("status") == "complete")
    assert sorted(complete.group_by("cell_id").len()["len"].to_list()) == [2, 2]
    restarts = [json.loads(m)["server"]["restarts"] for m in complete["meta_json"]]
    assert 1 in restarts and max(restarts) == 1

    requests = store.read_table(raw, "requests")
    dead = requests.filter((pl.col("run_id") == failed["run_id"][0]) & (pl.col("sent_ns") >= killed_ns))
    assert dead.height <= max(USERS) * 2, dead.select("sent_ns", "error")  # no spin against the dead port
    ended = requests.filter(pl.col("run_id") == failed["run_id"][0])["end_ns"].max()
    assert (ended - killed_ns) / 1e9 < 1.5  # stopped within a second of the kill (poll 0.2 s, a busy core)
