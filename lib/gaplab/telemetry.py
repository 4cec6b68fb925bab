"""Server and system telemetry sampled while a cell runs, on the request rows' clock.

Every `interval` seconds a background thread records, as long-format rows
(t_ns, source, metric, labels, value):
- the server's Prometheus metrics (vLLM's vllm:* gauges and counters, llama.cpp's
  llamacpp:* with --metrics), parsed with prometheus_client;
- llama.cpp's /slots: how many slots are processing;
- the server process's CPU (% of one core) and resident memory, with its children (psutil);
- GPU utilization and memory through NVML, when a GPU and pynvml are there.
Nothing fails when a source is missing: it simply has no rows.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import psutil
from prometheus_client.parser import text_string_to_metric_families

DEFAULT_INTERVAL = 0.5


def _get(url: str, timeout: float = 2) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except (urllib.error.URLError, OSError):
        return None


def prometheus_rows(text: str) -> list[tuple[str, str, float]]:
    """(metric, labels as JSON, value) for every sample of every family."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out.append((sample.name, json.dumps(sample.labels, sort_keys=True) if sample.labels else "",
                        float(sample.value)))
    return out


class _Nvml:
    """GPU figures through NVML, or nothing."""

    def __init__(self) -> None:
        self.handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no pynvml, no driver, no GPU: no GPU rows
            self.handles = []

    def rows(self) -> list[tuple[str, str, float]]:
        out = []
        for i, h in enumerate(self.handles):
            util = self.nv.nvmlDeviceGetUtilizationRates(h)
            mem = self.nv.nvmlDeviceGetMemoryInfo(h)
            label = json.dumps({"gpu": str(i)})
            out += [("gpu_util_pct", label, float(util.gpu)), ("gpu_mem_used_bytes", label, float(mem.used)),
                    ("gpu_mem_total_bytes", label, float(mem.total))]
        return out


class Sampler:
    """Samples in a thread from start() to stop(); rows() returns what it saw."""

    def __init__(self, metrics_url: str | None = None, slots_url: str | None = None, pid: int | None = None,
                 interval: float = DEFAULT_INTERVAL):
        self.metrics_url, self.slots_url, self.interval = metrics_url, slots_url, interval
        self.proc = None
        if pid:
            try:
                self.proc = psutil.Process(pid)
            except psutil.NoSuchProcess:
                self.proc = None
        self._rows: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gaplab-telemetry", daemon=True)
        self._gpu = _Nvml()

    def __enter__(self) -> "Sampler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._cpu_prime()
        self._thread.start()

    def stop(self) -> list[dict]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self._rows

    def rows(self) -> list[dict]:
        return self._rows

    def _procs(self) -> list:
        if self.proc is None:
            return []
        try:
            return [self.proc, *self.proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _cpu_prime(self) -> None:
        for p in self._procs():
            try:
                p.cpu_percent(None)
            except psutil.NoSuchProcess:
                pass

    def _add(self, t_ns: int, source: str, rows) -> None:
        self._rows += [{"t_ns": t_ns, "source": source, "metric": m, "labels": lab, "value": v} for m, lab, v in rows]

    def sample(self) -> None:
        t_ns = time.perf_counter_ns()
        if self.metrics_url and (body := _get(self.metrics_url)) is not None:
            self._add(t_ns, "metrics", prometheus_rows(body.decode(errors="replace")))
        if self.slots_url and (body := _get(self.slots_url)) is not None:
            try:
                slots = json.loads(body)
                busy = sum(bool(s.get("is_processing")) for s in slots)
                self._add(t_ns, "slots", [("slots_processing", "", float(busy)), ("slots_total", "", float(len(slots)))])
            except (ValueError, AttributeError):
                pass
        cpu = rss = 0.0
        procs = self._procs()
        for p in procs:
            try:
                cpu += p.cpu_percent(None)
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        if procs:
            self._add(t_ns, "process", [("cpu_pct", "", cpu), ("rss_bytes", "", rss)])
        self._add(t_ns, "gpu", self._gpu.rows())

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.sample()
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))
        self.sample()  # one last sample at the end of the cell
