"""A sweep on a real local Ray cluster (`ray start --head` on loopback, 2 worker slots) against
local servers with injected delays, writing to one shared folder: every cell is stored once,
a worker killed mid-trial costs only its own cell (retried, or recorded as failed when the
retries are spent), a second sweep resumes from the store, and bad input stops before any
cell runs."""

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

import polars as pl
import psutil
import pytest
import sse_server
import yaml
from ray_cluster import local_cluster

from gaplab.runtimes.process import free_port
from gaplab.storage import store
from gaplab.sweep import cluster

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def ray_address():
    pytest.importorskip("ray")
    with local_cluster(cpus=2) as address:
        yield address


@pytest.fixture(scope="module")
def servers():
    """Four servers that each take 0.3 s to a first token and 50 ms per token."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(sse_server.serving(0.3, 0.05, 20, cpu=None)) for _ in range(4)]


def _scenario(folder: Path, urls: list[str], **runtime) -> Path:
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cluster", "models": [{"name": "fake", "api": "chat", "quants": ["fp16"]}],
        "runtimes": [{"name": f"fake{i}", "kind": "openai", "base_url": url, **runtime} for i, url in enumerate(urls)],
        "workloads": [{"name": "p16-o20", "prompt_tokens": 16, "output_tokens": 20}],
        "load": {"concurrency": [1, 2], "requests": 2, "min_seconds": 4, "warmup": 0, "trials": 1, "max_trials": 1,
                 "precision": 0, "flush_seconds": 0.5}}))
    return path


def _kill_mid_trial(raw: Path, runtime: str, proc, timeout: float = 120) -> list[psutil.Process]:
    """SIGKILL the Ray worker serving `runtime` once one of its trials has written a part file;
    returns it and its children (the notebook kernel measuring the trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [p for p in psutil.process_iter(["cmdline"])
                   if any(f"ray::gaplab:{runtime}/" in a for a in p.info["cmdline"] or [])]
        if workers and list(raw.glob(f"*/{runtime}/**/*.requests.part-*.parquet")):
            tree = [workers[0], *workers[0].children(recursive=True)]
            workers[0].kill()
            return tree
        time.sleep(0.1)
    raise AssertionError(f"no trial of {runtime} was seen running")


def _complete_runs(raw: Path) -> dict[str, int]:
    runs = store.read_table(raw, "run").filter(pl.col("status") == "complete")
    return dict(runs.group_by("cell_id").len().iter_rows())


def test_a_killed_worker_costs_only_its_cell_and_the_sweep_resumes(ray_address, servers, tmp_path, gaplab_cli):
    path = _scenario(tmp_path, servers)
    raw = tmp_path / "shared"
    proc = subprocess.Popen([*gaplab_cli, "sweep", str(path), "--ray", ray_address, "--data-dir", str(raw)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_mid_trial(raw, "fake1", proc)
    assert any("ipykernel_launcher" in " ".join(p.cmdline()) for p in killed[1:]), "no kernel was measuring"
    _, alive = psutil.wait_procs(killed, timeout=10)
    assert not alive, f"the killed worker's kernel outlived it: {alive}"  # ipykernel polls its parent
    out, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 1), out + err
    assert "Traceback" not in out + err
    done = _complete_runs(raw)
    others = [c for c in done if not c.startswith("fake1/")]
    assert sorted(others) == sorted(f"fake{i}/fake/fp16/p16-o20/c{c}" for i in (0, 2, 3) for c in (1, 2))
    assert all(n == 1 for n in done.values()), done  # nothing measured twice, the retried cell included
    runs = store.read_table(raw, "run")
    for cell in (f"fake1/fake/fp16/p16-o20/c{c}" for c in (1, 2)):  # retried, or recorded as failed
        assert cell in done or runs.filter((pl.col("cell_id") == cell) & (pl.col("status") == "failed")).height
    # each server was a task: two ran at once (runs of different servers overlap in time)
    windows = [(r["runtime"], r["started_at"], r["finished_at"]) for r in
               runs.filter(pl.col("status") == "complete").iter_rows(named=True)]
    assert any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in windows for b in windows), windows

    again = subprocess.run([*gaplab_cli, "sweep", str(path), "--ray", ray_address, "--data-dir", str(raw)],
                           capture_output=True, text=True, timeout=300)
    assert f"{len(done)} already measured in the store" in again.stdout, again.stdout + again.stderr
    after = _complete_runs(raw)  # only a cell that lacked a run ran again
    assert len(after) == 8 and all(n == 1 for n in after.values()), after


def test_a_group_whose_retries_are_spent_is_recorded_failed(ray_address, servers, tmp_path, monkeypatch):
    import ray

    from gaplab.sweep.rounds import sweep

    monkeypatch.setattr(cluster, "RETRIES", 0)
    path = _scenario(tmp_path, servers[:2])
    raw = tmp_path / "shared"
    ended = threading.Event()

    class Running:  # _kill_mid_trial's view of the sweep, which runs on this (the main) thread
        def poll(self):
            return 0 if ended.is_set() else None

    killer = threading.Thread(target=_kill_mid_trial, args=(raw, "fake1", Running()))
    killer.start()
    try:
        result = sweep(path, raw_dir=raw, ray=ray_address, progress=False)
    finally:
        ended.set()
        killer.join()
        ray.shutdown()
    assert len(result.failed) == 2, result.failed
    assert all(f.startswith("fake1/") and "Ray worker died" in f for f in result.failed), result.failed
    lost = store.read_table(raw, "run").filter(pl.col("runtime") == "fake1")
    assert "failed" in set(lost["status"]) and "complete" not in set(lost["status"])
    assert _complete_runs(raw) == {f"fake0/fake/fp16/p16-o20/c{c}": 1 for c in (1, 2)}


def test_bad_cluster_input_stops_in_one_line_before_any_cell(ray_address, servers, tmp_path, gaplab_cli):
    raw = tmp_path / "shared"
    gpu = _scenario(tmp_path, servers[:1], gpus=1)
    res = subprocess.run([*gaplab_cli, "sweep", str(gpu), "--ray", ray_address, "--data-dir", str(raw)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "runtimes.fake0.gpus" in res.stderr and "0 GPUs" in res.stderr
    assert not raw.exists()


def test_an_unreachable_cluster_stops_in_one_line(tmp_path, gaplab_cli):
    pytest.importorskip("ray")
    port = free_port()  # nothing listens here
    path = _scenario(tmp_path, ["http://127.0.0.1:9/v1"])
    t0 = time.monotonic()
    res = subprocess.run([*gaplab_cli, "sweep", str(path), "--ray", f"127.0.0.1:{port}", "--data-dir",
                          str(tmp_path / "raw")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"--ray: nothing answers at 127.0.0.1:{port}" in res.stderr and "ray start --head" in res.stderr
    assert time.monotonic() - t0 < 60  # not Ray's own minute of retries
    bad = subprocess.run([*gaplab_cli, "sweep", str(path), "--ray", "head-node", "--data-dir", str(tmp_path / "raw")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--ray: 'head-node' is not HOST:PORT" in bad.stderr
    with socket.socket() as listener:  # a port that answers but is not a Ray head (Ray itself would retry for minutes)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        other = subprocess.run([*gaplab_cli, "sweep", str(path), "--ray", f"127.0.0.1:{listener.getsockname()[1]}",
                                "--data-dir", str(tmp_path / "raw")], capture_output=True, text=True, timeout=60)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "answers, but not as a Ray head" in other.stderr
    assert not (tmp_path / "raw").exists()
    with socket.socket() as s:  # free_port really was free: the check above was not vacuous
        s.bind(("127.0.0.1", port))
