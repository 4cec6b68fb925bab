"""GPU telemetry through NVML. This machine has no GPU, so a small fake `pynvml` in sys.modules
answers the calls telemetry makes, the way NVML answers them (milliwatts, MHz, millijoules since
the driver loaded, NVMLError for what a card does not support)."""

import json
import sys
import types
from types import SimpleNamespace

from gaplab.measure.telemetry import Sampler, _Nvml


class NVMLError(Exception):
    pass


def fake_pynvml(cards):
    """cards: per GPU a dict of its readings; None for one NVML does not support on it."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError, nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM = NVMLError, 1, 2

    def read(h, key):
        value = cards[h][key]
        if value is None:
            raise NVMLError("Not Supported")
        return value() if callable(value) else value

    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetCount = lambda: len(cards)
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=read(h, "util"), memory=0)
    nv.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=read(h, "used"), total=80 << 30)
    nv.nvmlDeviceGetPowerUsage = lambda h: read(h, "power_mw")
    nv.nvmlDeviceGetClockInfo = lambda h, kind: read(h, "sm" if kind == nv.NVML_CLOCK_SM else "mem")
    nv.nvmlDeviceGetTotalEnergyConsumption = lambda h: read(h, "energy_mj")
    return nv


def test_power_clocks_and_energy_since_the_start_per_gpu(monkeypatch):
    counter = iter([5_000_000, 5_150_000])  # mJ since the driver loaded: at the start, then at a sample
    cards = [{"util": 97, "used": 20 << 30, "power_mw": 412_500, "sm": 2520, "mem": 10501,
              "energy_mj": lambda: next(counter)},
             {"util": 0, "used": 1 << 30, "power_mw": None, "sm": 210, "mem": 405, "energy_mj": None}]  # no counter
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(cards))
    rows = {(m, json.loads(label)["gpu"]): v for m, label, v in _Nvml().rows()}
    assert rows[("gpu_power_w", "0")] == 412.5 and rows[("gpu_sm_clock_mhz", "0")] == 2520
    assert rows[("gpu_mem_clock_mhz", "0")] == 10501 and rows[("gpu_util_pct", "0")] == 97
    assert rows[("energy_j", "0")] == 150.0  # 150,000 mJ since sampling began, not since the driver loaded
    assert ("gpu_power_w", "1") not in rows and ("energy_j", "1") not in rows  # not supported: no row, no guess
    assert rows[("gpu_util_pct", "1")] == 0 and rows[("gpu_sm_clock_mhz", "1")] == 210


def test_the_sampler_stores_gpu_rows_on_the_request_rows_clock(monkeypatch):
    cards = [{"util": 50, "used": 1 << 30, "power_mw": 100_000, "sm": 1000, "mem": 5000, "energy_mj": 0}]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(cards))
    sampler = Sampler(interval=0.05)
    sampler.sample()
    gpu = [r for r in sampler.rows() if r["source"] == "gpu"]
    assert {r["metric"] for r in gpu} >= {"gpu_power_w", "gpu_sm_clock_mhz", "gpu_mem_clock_mhz", "energy_j"}
    assert all(isinstance(r["t_ns"], int) and r["t_ns"] > 0 for r in gpu)


def test_no_pynvml_means_no_gpu_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert _Nvml().rows() == []
