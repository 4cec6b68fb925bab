"""The machine's memory bandwidth, STREAM-style, with numpy: what bounds a decode step that
must read every weight once per step.

The triad a = b + s * c runs as two numpy passes over arrays far larger than any cache
(a = s * c, then a += b), which move 40 bytes per element (read c, write a; read a and b,
write a); the figure is those bytes over the best of 20 passes (STREAM's best-of-N, which
a shared machine's passing noise cannot lower). "All threads" splits the arrays into one
slice per core, each thread running the same passes on its slice (numpy releases the GIL
inside them). A server started with one thread can use only the one-thread figure; one
with every core, the all-threads figure.

Each GPU NVML lists gets its peak figure, not a measured one: the maximum memory clock x 2
(double data rate) x the memory bus width, which is how vendors state it (RTX 4090: 10501 MHz
x 2 x 384 bit / 8 = 1008 GB/s; A100 SXM 80GB: 1593 MHz x 2 x 5120 bit / 8 = 2039 GB/s). Where
NVML gives no clock or bus width (unified-memory parts such as GB10, old drivers), the card's
name is looked up in data/reference/gpu_bandwidth.csv, whose rows name the datasheet. GPU rows
have device "gpu:<index> <name>", threads_used 0 and their source in `method`; CPU rows have
device "cpu".
"""

from __future__ import annotations

import csv
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gaplab.spec.config import REFERENCE_DIR
from gaplab.storage.backend import Root

ELEMENTS = 16_000_000  # 128 MB per array, three arrays: far past the last-level cache
BYTES_PER_ELEMENT = 40
REPEATS = 20  # about 15 ms a pass here, so the best of 20 costs well under a second
METHOD = f"numpy triad in two passes, {BYTES_PER_ELEMENT} B/element, best of {REPEATS}"
CARD_TABLE = REFERENCE_DIR / "gpu_bandwidth.csv"


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


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def card_bandwidth(name: str, table: Path = CARD_TABLE) -> tuple[float, str] | None:
    """(GB/s, source) from the card table's most specific row for `name`: a row matches when every
    word of its name_contains is a word of the name (so "A10" never matches an A100), and the row
    with the most words wins ("A100 80GB PCIe" before "A100 80GB")."""
    with open(table, newline="") as f:
        rows = [r for r in csv.DictReader(f) if _words(r["name_contains"]) <= _words(name)]
    if not rows:
        return None
    best = max(rows, key=lambda r: len(_words(r["name_contains"])))
    try:
        return float(best["gb_s"]), best["source"]
    except ValueError:
        raise ValueError(f"{table}: gb_s {best['gb_s']!r} of row {best['name_contains']!r} is not a number; "
                         "write it in GB/s, digits only") from None


def _nvml_bandwidth(nv, handle) -> tuple[float, str] | None:
    """(GB/s, how) from the memory clock and bus width, or None where NVML gives neither."""
    try:
        mhz = nv.nvmlDeviceGetMaxClockInfo(handle, nv.NVML_CLOCK_MEM)
        bits = nv.nvmlDeviceGetMemoryBusWidth(handle)
    except Exception:  # NVMLError (not supported on this part or driver), or a pynvml without the call
        return None
    if not mhz or not bits:
        return None
    return mhz * 2 * bits / 8 / 1e3, f"NVML: {mhz} MHz x 2 x {bits} bit"


def gpu_rows(table: Path = CARD_TABLE) -> tuple[list[dict], list[str]]:
    """One row per GPU NVML lists whose bandwidth NVML or the card table gives, and a line for
    each GPU found in neither."""
    try:
        import pynvml as nv

        nv.nvmlInit()
    except Exception:  # no pynvml, no driver, no GPU: no GPU rows
        return [], []
    rows, missing = [], []
    try:
        for i in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            name = nv.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name  # older pynvml returns bytes
            found = _nvml_bandwidth(nv, handle)
            if found is None and (card := card_bandwidth(name, table)):
                found = (card[0], f"card table: {card[1]}")
            if found is None:
                missing.append(f"gpu:{i} {name} has no bandwidth figure: NVML gives no memory clock or bus "
                               f"width, and {table.name} has no row for it (add one, with its datasheet)")
                continue
            rows.append({"repeat": 1, "threads_used": 0, "gb_s": found[0], "elements": None, "method": found[1],
                         "device": f"gpu:{i} {name}"})
    finally:
        nv.nvmlShutdown()
    return rows, missing


def measure(repeats: int = 2) -> list[dict]:
    """One CPU row per repeat and thread count (1, and every core), then one row per GPU: GB/s
    (1e9 bytes per second). A GPU without a figure is named on stdout."""
    cores = os.cpu_count() or 1
    cpu = [{"repeat": k, "threads_used": t, "gb_s": triad(t) / 1e9, "elements": ELEMENTS, "method": METHOD,
            "device": "cpu"} for k in range(1, repeats + 1) for t in sorted({1, cores})]
    gpu, missing = gpu_rows()
    for line in missing:
        print(f"gaplab: {line}", flush=True)
    return cpu + gpu


def record(raw_dir: Root, scenario: str) -> list[dict]:
    """Measure this machine's bandwidth and store it; returns the rows."""
    from gaplab.machine.hardware import hardware, machine_id
    from gaplab.measure.records import RunIdentity
    from gaplab.storage import store

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
    """One line: CPU GB/s per thread count, each repeat; then each GPU's figure and its source."""
    by: dict[int, list[float]] = {}
    for r in rows:
        if r.get("device") in ("cpu", None):
            by.setdefault(r["threads_used"], []).append(r["gb_s"])
    parts = [f"{t} thread{'s' if t > 1 else ''} " + " / ".join(f"{v:.1f}" for v in vs) + " GB/s"
             for t, vs in sorted(by.items())]
    parts += [f"{r['device']} {r['gb_s']:.0f} GB/s ({r['method']})" for r in rows
              if r.get("device") not in ("cpu", None)]
    return "; ".join(parts)
