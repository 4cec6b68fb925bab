"""Does a sweep on Ray finish sooner than the same sweep run serially, when cells wait on their
servers? Starts a real local Ray cluster (`ray start --head`, 2 CPUs: two server groups at once)
and SERVERS local servers with injected delays (tests/support/sse_server.py: first token after
0.3 s, then one token every 50 ms), then runs one attach-mode scenario of SERVERS x 2 cells
(concurrency 1 and 2) both ways into fresh folders, serial and Ray alternating, ROUNDS times
each. Prints the seconds of each, the speed-up, and checks that every cell is stored once.

    .venv/bin/python bench/cluster_sweep.py [SERVERS] [ROUNDS]      (default 4 2: 8 cells, 2 rounds)

Both ways pay the same per-trial papermill run; the Ray sweep also pays joining the cluster
and a kernel per task on the workers, and the serial sweep measures the machine's memory
bandwidth first (about 2.5 s here; a sweep on Ray does not). On 2 cores, the servers wait
rather than compute, so the two worker slots overlap their waits.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "lib"))

import sse_server  # noqa: E402
from ray_cluster import local_cluster  # noqa: E402

from gaplab.storage import store  # noqa: E402

GAPLAB = str(Path(sys.executable).parent / "gaplab")


def scenario(folder: Path, urls: list[str]) -> Path:
    path = folder / "cluster-bench.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cluster-bench", "models": [{"name": "fake", "api": "chat", "quants": ["fp16"]}],
        "runtimes": [{"name": f"fake{i}", "kind": "openai", "base_url": url} for i, url in enumerate(urls)],
        "workloads": [{"name": "p16-o20", "prompt_tokens": 16, "output_tokens": 20}],
        "load": {"concurrency": [1, 2], "requests": 4, "min_seconds": 4, "warmup": 0, "trials": 1,
                 "max_trials": 1, "precision": 0}}))
    return path


def timed_sweep(path: Path, raw: Path, ray: str | None) -> float:
    t0 = time.monotonic()
    cmd = [GAPLAB, "sweep", str(path), "--data-dir", str(raw)] + (["--ray", ray] if ray else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"sweep failed: {res.stdout[-1000:]} {res.stderr[-1000:]}")
    runs = store.read_table(raw, "run").filter(pl.col("status") == "complete")
    per_cell = runs.group_by("cell_id").len()
    n_cells = 2 * len(list(yaml.safe_load(path.read_text())["runtimes"]))
    assert per_cell.height == n_cells and (per_cell["len"] == 1).all(), per_cell
    return seconds


def main() -> None:
    n_servers = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    work = Path(tempfile.mkdtemp(prefix="gaplab-cluster-bench-"))
    serial, ray = [], []
    with contextlib.ExitStack() as stack:
        path = scenario(work, [stack.enter_context(sse_server.serving(0.3, 0.05, 20, cpu=None))
                               for _ in range(n_servers)])
        address = stack.enter_context(local_cluster(cpus=2))
        print(f"cluster at {address}: 2 worker slots; {2 * n_servers} cells in {n_servers} server groups")
        for k in range(rounds):
            serial.append(timed_sweep(path, work / f"serial-{k}", None))
            ray.append(timed_sweep(path, work / f"ray-{k}", address))
            print(f"round {k + 1}: serial {serial[-1]:.1f} s, Ray {ray[-1]:.1f} s, "
                  f"speed-up {serial[-1] / ray[-1]:.2f}x", flush=True)
    ratios = [s / r for s, r in zip(serial, ray)]
    print(f"serial: median {statistics.median(serial):.1f} s; Ray (2 workers): median {statistics.median(ray):.1f} s; "
          f"speed-up median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x over "
          f"{rounds} rounds); every cell stored once each way; the serial time includes its bandwidth "
          "measurement (about 2.5 s)")


if __name__ == "__main__":
    main()
