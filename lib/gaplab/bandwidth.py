"""The machine's memory bandwidth, STREAM-style, with numpy: what bounds a decode step that
must read every weight once per step.

The triad a = b + s * c runs as two numpy passes over arrays far larger than any cache
(a = s * c, then a += b), which move 40 bytes per element (read c, write a; read a and b,
write a); the figure is those bytes over the best of a few repeats. "All threads" splits
the arrays into one slice per core, each thread running the same passes on its slice
(numpy releases the GIL inside them). A server started with one thread can use only the
one-thread figure; one with every core, the all-threads figure.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ELEMENTS = 16_000_000  # 128 MB per array, three arrays: far past the last-level cache
BYTES_PER_ELEMENT = 40
REPEATS = 5
METHOD = f"numpy triad in two passes, {BYTES_PER_ELEMENT} B/element, best of {REPEATS}"


def _passes(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    np.multiply(c, 3.0, out=a)
    np.add(a, b, out=a)


def triad(threads: int = 1, elements: int = ELEMENTS, repeats: int = REPEATS) -> float:
    """Bytes per second the triad moves with `threads` threads (best of `repeats`)."""
    a, b, c = np.zeros(elements), np.ones(elements), np.full(elements, 2.0)
    bounds = np.linspace(0, elements, threads + 1).astype(int)
    slices = [(a[lo:hi], b[lo:hi], c[lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        _passes(a, b, c)  # touch every page before timing
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda s: _passes(*s), slices))
            best = min(best, time.perf_counter() - t0)
    if not np.allclose(a[:: max(1, elements // 1000)], 7.0):
        raise RuntimeError("the triad computed a wrong result")
    return BYTES_PER_ELEMENT * elements / best


def measure(repeats: int = 2) -> list[dict]:
    """One row per repeat and thread count (1, and every core): GB/s (1e9 bytes per second)."""
    cores = os.cpu_count() or 1
    return [{"repeat": k, "threads_used": t, "gb_s": triad(t) / 1e9, "elements": ELEMENTS, "method": METHOD}
            for k in range(1, repeats + 1) for t in sorted({1, cores})]


def record(raw_dir: Path, scenario: str) -> list[dict]:
    """Measure this machine's bandwidth and store it; returns the rows."""
    from gaplab import store
    from gaplab.hardware import hardware, machine_id
    from gaplab.records import RunIdentity

    rows = [{**r, "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")} for r in measure()]
    run_id = store.new_run_id()
    ident = RunIdentity(run_id=run_id, cell_id="machine/stream-triad", cell_key=f"stream-triad:{METHOD}",
                        scenario=scenario, hardware_id=hardware()["hardware_id"], machine_id=machine_id(),
                        series_id=run_id, trial=1, runtime="stream-triad", runtime_kind="machine",
                        runtime_version=f"numpy {np.__version__}", model="-", quant="-", workload="triad",
                        concurrency=1, threads=None, parallel=None)
    store.write_bandwidth(raw_dir, ident, rows)
    return rows


def summary(rows: list[dict]) -> str:
    """One line: GB/s per thread count, each repeat."""
    by: dict[int, list[float]] = {}
    for r in rows:
        by.setdefault(r["threads_used"], []).append(r["gb_s"])
    return "; ".join(f"{t} thread{'s' if t > 1 else ''} " + " / ".join(f"{v:.1f}" for v in vs) + " GB/s"
                     for t, vs in sorted(by.items()))
