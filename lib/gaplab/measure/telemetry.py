"""Server and system telemetry sampled while a cell runs, on the request rows' clock.

Every `interval` seconds a background thread records, as long-format rows
(t_ns, source, metric, labels, value):
- the server's Prometheus metrics (vLLM's vllm:* gauges and counters, llama.cpp's
  llamacpp:* with --metrics), parsed with prometheus_client;
- llama.cpp's /slots: how many slots are processing;
- the server process's CPU (% of one core) and resident memory, with its children (psutil);
- the whole machine's busy and stolen cores and the client process's CPU, so `background`
  can tell how much other work ran beside the trial;
- per GPU through NVML, when a GPU and pynvml are there: utilization, memory used, power, SM and
  memory clocks, and its energy since the sampler started (the driver's total energy counter);
- the CPU packages' energy through RAPL (Linux powercap), where its counters can be read.
Nothing fails when a source is missing: it simply has no rows (and for energy, a reason).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
import time
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from gaplab.measure.httpget import get_bytes

DEFAULT_INTERVAL = 0.5
# A trial beside other work using more than this many cores (mean) is flagged as contended:
# on a 2-core box a quarter core is well above the idle background (about 0.02 here).
CONTENDED_CORES = 0.25


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
    """GPU figures through NVML, or nothing. A figure a GPU does not report (NVML's Not Supported:
    older cards have no energy counter, some no power reading) has no rows; the others stay."""

    def __init__(self) -> None:
        self.handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no pynvml, no driver, no GPU: no GPU rows
            self.handles = []
        # each GPU's energy counter (mJ since the driver loaded) when sampling starts
        self._energy0 = [self._read(self.nv.nvmlDeviceGetTotalEnergyConsumption, h) for h in self.handles]

    def _read(self, call, *args):
        try:
            return call(*args)
        except Exception:  # pynvml.NVMLError (Not Supported, GPU lost): this figure is not read
            return None

    def rows(self) -> list[tuple[str, str, float]]:
        nv, out = getattr(self, "nv", None), []
        if nv is None:  # pynvml did not load, so there are no handles: no GPU rows
            return []
        for i, h in enumerate(self.handles):
            label = json.dumps({"gpu": str(i)})
            util = self._read(nv.nvmlDeviceGetUtilizationRates, h)
            mem = self._read(nv.nvmlDeviceGetMemoryInfo, h)
            power_mw = self._read(nv.nvmlDeviceGetPowerUsage, h)
            energy_mj = self._read(nv.nvmlDeviceGetTotalEnergyConsumption, h) if self._energy0[i] is not None else None
            found = {"gpu_util_pct": util.gpu if util else None,
                     "gpu_mem_used_bytes": mem.used if mem else None, "gpu_mem_total_bytes": mem.total if mem else None,
                     "gpu_power_w": power_mw / 1e3 if power_mw is not None else None,
                     "gpu_sm_clock_mhz": self._read(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
                     "gpu_mem_clock_mhz": self._read(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM),
                     "energy_j": (energy_mj - self._energy0[i]) / 1e3 if energy_mj is not None else None}
            out += [(metric, label, float(value)) for metric, value in found.items() if value is not None]
        return out


POWERCAP = Path("/sys/class/powercap")


class Rapl:
    """Energy of each CPU package since the sampler started, from its RAPL counter under the powercap
    root (`intel-rapl:N`, AMD's included; its sub-zones `intel-rapl:N:M` are parts of a package). A
    counter runs up to max_energy_range_uj and starts again from 0: a reading below the last one has
    wrapped (once: at a few hundred watts a wrap takes minutes, a sample half a second). `unmeasured`
    says why nothing is read, or None."""

    def __init__(self, root: Path = POWERCAP):
        self.zones: list[tuple[str, Path, int]] = []  # (labels, energy_uj file, wrap range)
        self.unmeasured: str | None = None
        self._last: list[int] = []
        self._joules: list[float] = []
        try:
            dirs = sorted(d for d in root.glob("intel-rapl:*") if re.fullmatch(r"intel-rapl:\d+", d.name))
            if not dirs:
                self.unmeasured = (f"{root} does not exist" if not root.is_dir() else f"{root} has no RAPL package")
                self.unmeasured += " (no RAPL driver for this CPU; a virtual machine usually exposes none)"
                return
            for d in dirs:
                label = json.dumps({"zone": d.name, "package": (d / "name").read_text().strip()})
                self.zones.append((label, d / "energy_uj", int((d / "max_energy_range_uj").read_text())))
            self._last = [int(f.read_text()) for _, f, _ in self.zones]
        except (OSError, ValueError) as exc:
            hint = " (Linux lets only root read it since 5.10)" if isinstance(exc, PermissionError) else ""
            self.zones, self.unmeasured = [], f"{exc if isinstance(exc, OSError) else f'{root}: {exc}'}{hint}"
            return
        self._joules = [0.0] * len(self.zones)

    def rows(self) -> list[tuple[str, str, float]]:
        """(energy_j, labels, joules since the start) per package; none from a counter that failed to read."""
        out = []
        for i, (label, path, span) in enumerate(self.zones):
            try:
                now = int(path.read_text())
            except (OSError, ValueError):
                continue
            step = now - self._last[i]
            self._joules[i] += (step + span if step < 0 else step) / 1e6
            self._last[i] = now
            out.append(("energy_j", label, self._joules[i]))
        return out


class Sampler:
    """Samples in a thread from start() to stop(); rows() returns what it saw."""

    def __init__(self, metrics_url: str | None = None, slots_url: str | None = None, pid: int | None = None,
                 interval: float = DEFAULT_INTERVAL, powercap: Path = POWERCAP):
        self.metrics_url, self.slots_url, self.interval = metrics_url, slots_url, interval
        self.proc = None
        if pid:
            try:
                self.proc = psutil.Process(pid)
            except psutil.NoSuchProcess:
                self.proc = None
        self._known: dict[int, psutil.Process] = {}
        self.client = psutil.Process(os.getpid())
        self._host = psutil.cpu_times()
        self._rows: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gaplab-telemetry", daemon=True)
        self._gpu = _Nvml()
        self._rapl = Rapl(powercap)

    @property
    def energy_unmeasured(self) -> str | None:
        """Why the CPU packages' energy is not sampled (the run stores it); None where it is."""
        return self._rapl.unmeasured

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
        """The server and its children, as the same Process objects from sample to sample:
        cpu_percent counts from the previous call on that object, so a new object reads 0."""
        if self.proc is None:
            return []
        try:
            found = [self.proc, *self.proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        return [self._known.setdefault(p.pid, p) for p in found]

    def _cpu_prime(self) -> None:
        self._host = psutil.cpu_times()
        for p in [self.client, *self._procs()]:
            try:
                p.cpu_percent(None)
            except psutil.NoSuchProcess:
                pass

    def _add(self, t_ns: int, source: str, rows) -> None:
        self._rows += [{"t_ns": t_ns, "source": source, "metric": m, "labels": lab, "value": v} for m, lab, v in rows]

    def sample(self) -> None:
        t_ns = time.perf_counter_ns()
        if self.metrics_url and (body := get_bytes(self.metrics_url)) is not None:
            self._add(t_ns, "metrics", prometheus_rows(body.decode(errors="replace")))
        if self.slots_url and (body := get_bytes(self.slots_url)) is not None:
            # llama-server answers /slots from its main loop, after the step under way: the
            # state it reports is that of the reply's time, not of the ask's
            answered_ns = time.perf_counter_ns()
            try:
                slots = json.loads(body)
                busy = sum(bool(s.get("is_processing")) for s in slots)
                self._add(answered_ns, "slots", [("slots_processing", "", float(busy)), ("slots_total", "", float(len(slots)))])
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
        self._add(t_ns, "host", self._host_rows())
        self._add(t_ns, "gpu", self._gpu.rows())
        self._add(t_ns, "rapl", self._rapl.rows())

    def _host_rows(self) -> list[tuple[str, str, float]]:
        """Busy and stolen cores of the whole machine since the last sample, and the client's CPU."""
        now, before = psutil.cpu_times(), self._host
        delta = {f: getattr(now, f) - getattr(before, f) for f in now._fields}
        wall = sum(delta[f] for f in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
                   if f in delta) / psutil.cpu_count()
        if wall < 0.1:  # the kernel counts in 10 ms ticks: too short a window says nothing
            return []
        self._host = now
        busy = sum(delta.get(f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
        return [("busy_cores", "", busy / wall), ("steal_cores", "", delta.get("steal", 0.0) / wall),
                ("client_cpu_pct", "", self.client.cpu_percent(None))]

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.sample()
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))
        self.sample()  # one last sample at the end of the cell


def background(rows: list[dict]) -> dict:
    """Mean cores that other processes kept busy during the samples (the machine's busy cores
    minus the server's and the client's), and mean stolen cores; None where not sampled.
    Other work beside a trial slows it: the report shows this so a contended trial is visible."""
    by_t: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["source"] in ("host", "process") and r["metric"] in ("busy_cores", "steal_cores", "client_cpu_pct",
                                                                     "cpu_pct"):
            by_t.setdefault(r["t_ns"], {})[r["metric"]] = r["value"]
    full = [v for v in by_t.values() if {"busy_cores", "cpu_pct", "client_cpu_pct"} <= v.keys()]
    steal = [v["steal_cores"] for v in by_t.values() if "steal_cores" in v]
    other = [max(0.0, v["busy_cores"] - (v["cpu_pct"] + v["client_cpu_pct"]) / 100) for v in full]
    return {"other_cores": statistics.fmean(other) if other else None,
            "steal_cores": statistics.fmean(steal) if steal else None}
