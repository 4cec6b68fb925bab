"""The machine's bandwidth figures: the GPU's from NVML or the card table, and how rows are made.

This machine has no GPU, and pynvml cannot reach a driver here, so the GPU tests put a small fake
`pynvml` module in sys.modules: a stand-in for a library that cannot run here, answering only the
calls bandwidth.py makes, with the figures NVML reports for real cards.
"""

import sys
import types

import pytest

from gaplab.machine import bandwidth


class NVMLError(Exception):
    """What pynvml raises, e.g. NVML_ERROR_NOT_SUPPORTED for a unified-memory part's bus width."""


def fake_pynvml(cards):
    """A pynvml listing `cards`: (name, max memory clock MHz, bus width bits), None where NVML raises."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError, nv.NVML_CLOCK_MEM, nv.shut = NVMLError, 2, []

    def answer(value):
        if value is None:
            raise NVMLError("Not Supported")
        return value

    def clock(h, kind):
        assert kind == nv.NVML_CLOCK_MEM  # the memory clock, not the graphics clock
        return answer(cards[h][1])

    nv.nvmlInit = lambda: None
    nv.nvmlShutdown = lambda: nv.shut.append(True)
    nv.nvmlDeviceGetCount = lambda: len(cards)
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetName = lambda h: cards[h][0]
    nv.nvmlDeviceGetMaxClockInfo = clock
    nv.nvmlDeviceGetMemoryBusWidth = lambda h: answer(cards[h][2])
    return nv


THREE = [("NVIDIA GeForce RTX 4090", 10501, 384),
         (b"NVIDIA GB10", 2000, None),  # unified memory: no bus width; older pynvml names in bytes
         ("NVIDIA Imaginary X1", None, None)]


@pytest.mark.parametrize("mhz, bits, published", [
    (10501, 384, 1008),  # RTX 4090, Ada whitepaper
    (1593, 5120, 2039),  # A100 SXM 80GB, A100 datasheet
    (5001, 256, 320),  # T4, T4 datasheet
])
def test_the_nvml_figure_is_memory_clock_times_two_times_bus_width(monkeypatch, mhz, bits, published):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([("card", mhz, bits)]))
    rows, missing = bandwidth.gpu_rows()
    assert rows[0]["gb_s"] == pytest.approx(published, rel=1e-3) and not missing
    assert rows[0]["method"] == f"NVML: {mhz} MHz x 2 x {bits} bit"


def test_a_gpu_gets_its_figure_from_nvml_or_the_card_table_or_no_row(monkeypatch):
    nv = fake_pynvml(THREE)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    rows, missing = bandwidth.gpu_rows()
    assert [r["device"] for r in rows] == ["gpu:0 NVIDIA GeForce RTX 4090", "gpu:1 NVIDIA GB10"]
    assert rows[0]["gb_s"] == pytest.approx(1008.096)
    assert rows[1]["gb_s"] == 273
    assert rows[1]["method"] == "card table: NVIDIA DGX Spark datasheet (GB10 Grace Blackwell Superchip)"
    assert all(r["threads_used"] == 0 and r["repeat"] == 1 for r in rows)
    assert len(missing) == 1 and missing[0].startswith("gpu:2 NVIDIA Imaginary X1 has no bandwidth figure")
    assert nv.shut == [True]


def test_without_pynvml_there_are_no_gpu_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert bandwidth.gpu_rows() == ([], [])


def test_measure_returns_cpu_rows_then_gpu_rows_and_names_a_gpu_without_a_figure(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(THREE))
    monkeypatch.setattr(bandwidth, "triad", lambda threads: threads * 10e9)  # the triad itself is slow
    monkeypatch.setattr(bandwidth.os, "cpu_count", lambda: 4)
    rows = bandwidth.measure()
    assert [(r["device"], r["threads_used"], r["repeat"]) for r in rows] == [
        ("cpu", 1, 1), ("cpu", 4, 1), ("cpu", 1, 2), ("cpu", 4, 2),
        ("gpu:0 NVIDIA GeForce RTX 4090", 0, 1), ("gpu:1 NVIDIA GB10", 0, 1)]
    assert rows[0]["method"] == bandwidth.METHOD and "best of 20" in bandwidth.METHOD
    assert "gaplab: gpu:2 NVIDIA Imaginary X1 has no bandwidth figure" in capsys.readouterr().out
    assert bandwidth.summary(rows) == ("1 thread 10.0 / 10.0 GB/s; 4 threads 40.0 / 40.0 GB/s; "
                                       "gpu:0 NVIDIA GeForce RTX 4090 1008 GB/s (NVML: 10501 MHz x 2 x 384 bit); "
                                       "gpu:1 NVIDIA GB10 273 GB/s (card table: NVIDIA DGX Spark datasheet "
                                       "(GB10 Grace Blackwell Superchip))")


@pytest.mark.parametrize("name, gb_s", [
    ("NVIDIA A100 80GB PCIe", 1935),  # before the A100 80GB (SXM) row above it
    ("NVIDIA A100-SXM4-80GB", 2039),
    ("NVIDIA A100-PCIE-40GB", 1555),  # not the A10's 600: names match word by word
    ("NVIDIA A10", 600),
    ("NVIDIA L40S", 864),
    ("NVIDIA L4", 300),
    ("NVIDIA H100 80GB HBM3", 3350),
    ("NVIDIA RTX 6000 Ada Generation", 960),
])
def test_the_card_table_matches_the_most_specific_row(name, gb_s):
    assert bandwidth.card_bandwidth(name)[0] == gb_s


def test_the_most_specific_row_wins_wherever_it_stands(tmp_path):
    for order in ("X1,100,general\nX1 Pro,200,specific\n", "X1 Pro,200,specific\nX1,100,general\n"):
        (tmp_path / "t.csv").write_text("name_contains,gb_s,source\n" + order)
        assert bandwidth.card_bandwidth("Maker X1 Pro", tmp_path / "t.csv") == (200.0, "specific")
        assert bandwidth.card_bandwidth("Maker X1", tmp_path / "t.csv") == (100.0, "general")
    assert bandwidth.card_bandwidth("Maker X2", tmp_path / "t.csv") is None


def test_a_card_table_figure_that_is_not_a_number_is_named(tmp_path):
    (tmp_path / "t.csv").write_text("name_contains,gb_s,source\nX1,fast,datasheet\n")
    with pytest.raises(ValueError, match="gb_s 'fast' of row 'X1'"):
        bandwidth.card_bandwidth("X1", tmp_path / "t.csv")


def test_every_card_table_row_has_a_figure_and_a_source():
    import csv

    with open(bandwidth.CARD_TABLE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 12 and len({r["name_contains"] for r in rows}) == len(rows)
    assert all(float(r["gb_s"]) > 0 and r["source"].strip() for r in rows)
