"""Energy per output token from stored RAPL samples (real Parquet runs in a temporary store):
the joules of each trial's measured span over its tokens, one estimate per cell with its
interval, and "not measured" with the stored reason where no counter was read."""

import json

import pytest

from gaplab.analysis import metrics, stats
from gaplab.measure.records import RequestRecord
from gaplab.report import energy, speed
from gaplab.storage import store

S = 1_000_000_000
REASON = "/sys/class/powercap does not exist (no RAPL driver for this CPU; a virtual machine usually exposes none)"


def ident(run_id, trial, **kw):
    return {"run_id": run_id, "cell_id": "c", "cell_key": "k", "scenario": "s", "hardware_id": "hw",
            "machine_id": "m-1", "series_id": "s1", "trial": trial, "runtime": "rt", "runtime_kind": "llamacpp",
            "runtime_version": "v", "model": "m", "quant": "Q8_0", "workload": "w", "concurrency": 2,
            "threads": 1, "parallel": 2, **kw}


def requests(tokens=20):
    """Two measured requests from 10 s to 14 s (tokens each), a warmup before them and a failure."""
    def one(i, sent, end, warmup=False, error=None):
        r = RequestRecord(index=i, user=i % 2, warmup=warmup, scheduled_ns=sent * S, sent_ns=sent * S,
                          end_ns=end * S, error=error)
        if error is None:
            r.first_token_ns, r.last_token_ns, r.completion_tokens = sent * S + 1, end * S - 1, tokens
            r.chunks = [(sent * S + 1, "content", 1)]
        return r
    return [one(0, 2, 5, warmup=True), one(1, 10, 13), one(2, 11, 14), one(3, 12, 13, error="HTTP 500: x")]


def rapl_rows(watts: list[float], start_s=0.25, end_s=20.25, step_s=0.5, drop_at=None):
    """Cumulative joules per package at a constant power each, sampled off the requests' second
    marks (so the span's ends fall between samples); drop_at: a sample where package 1 failed."""
    rows, n = [], int((end_s - start_s) / step_s) + 1
    for k in range(n):
        t = start_s + k * step_s
        for p, w in enumerate(watts):
            if drop_at == k and p == 1:
                continue
            rows.append({"t_ns": int(t * S), "source": "rapl", "metric": "energy_j",
                         "labels": json.dumps({"zone": f"intel-rapl:{p}", "package": f"package-{p}"}),
                         "value": w * (t - start_s)})
    return rows


def cells(raw):
    scan = speed.scan_requests(raw, "m-1")
    return energy.cell_energy(raw, metrics.trial_summary(scan), scan)


def test_joules_per_token_per_cell_with_its_interval(tmp_path):
    # two packages; trial 1 at 6 + 4 W, trial 2 at 7 + 5 W (package 1 missing one sample), trial 3 at 11 W
    for trial, watts, drop in ((1, [6.0, 4.0], None), (2, [7.0, 5.0], 20), (3, [11.0, 0.0], None)):
        store.write_run(tmp_path, ident(f"2026010{trial}T000000Z-aaaaaa", trial), {"status": "complete"},
                        requests(), telemetry=rapl_rows(watts, drop_at=drop))
    got = cells(tmp_path)
    assert got.height == 1
    row = got.row(0, named=True)
    per_token = [w * 4 / 40 for w in (10.0, 12.0, 11.0)]  # 4 s from first send to last end, 40 tokens
    assert row["trials"] == 3 and row["watts"] == pytest.approx(11.0)
    expected = stats.mean_interval(per_token, stats.pool([per_token]))
    assert row["joules_per_token"] == pytest.approx(1.1)
    assert (row["joules_per_token_lo"], row["joules_per_token_hi"]) == pytest.approx((expected.lo, expected.hi))
    assert row["joules_per_token_lo"] < 1.1 < row["joules_per_token_hi"]
    story = energy.energy_story(tmp_path, "m-1", got)
    assert "not measured" not in story.lower() and "idle power" in story
    table = energy.energy_table(got).data
    assert "| 1.1 \\[" in table and "| 11.0 \\[" in table  # estimate [interval], escaped for Markdown


def test_a_run_whose_samples_miss_its_span_is_not_guessed(tmp_path):
    store.write_run(tmp_path, ident("20260101T000000Z-aaaaaa", 1), {"status": "complete"}, requests(),
                    telemetry=rapl_rows([10.0], start_s=10.5))  # sampling began after the first send
    assert cells(tmp_path).is_empty()


def test_no_readable_counter_renders_not_measured_with_the_reason(tmp_path):
    store.write_run(tmp_path, ident("20260101T000000Z-aaaaaa", 1), {"status": "complete", "energy_unmeasured": REASON},
                    requests(), telemetry=[{"t_ns": 0, "source": "host", "metric": "busy_cores", "labels": "",
                                            "value": 1.0}])
    store.write_run(tmp_path, ident("20260102T000000Z-aaaaaa", 2), {"status": "complete", "energy_unmeasured": REASON},
                    requests())
    got = cells(tmp_path)
    assert got.is_empty()
    story = energy.energy_story(tmp_path, "m-1", got)
    assert story.startswith("**Energy per output token: not measured.**")
    assert "virtual machine usually exposes none" in story and "(2 runs)" in story
    assert energy.energy_table(got).data == ""


def test_runs_from_before_energy_was_read_say_so_beside_measured_ones(tmp_path):
    store.write_run(tmp_path, ident("20260101T000000Z-aaaaaa", 1), {"status": "complete"}, requests(),
                    telemetry=rapl_rows([10.0]))
    old = ident("20260102T000000Z-bbbbbb", 1, cell_key="k2", cell_id="c2", concurrency=4)
    store.write_run(tmp_path, old, {"status": "complete"}, requests())
    got = cells(tmp_path)
    assert got["concurrency"].to_list() == [2]
    story = energy.energy_story(tmp_path, "m-1", got)
    assert "Not measured for the other runs: no RAPL samples were stored" in story and "(1 run)" in story
    assert got["joules_per_token"].item() == pytest.approx(10.0 * 4 / 40)


def gpu_rows(watts: float, start_s=0.25, end_s=20.25, step_s=0.5):
    """One card's energy since sampling began (NVML's total energy counter, as telemetry stores it)."""
    n = int((end_s - start_s) / step_s) + 1
    return [{"t_ns": int((start_s + k * step_s) * S), "source": "gpu", "metric": "energy_j",
             "labels": json.dumps({"gpu": "0"}), "value": watts * k * step_s} for k in range(n)]


def test_gpu_energy_per_token_beside_the_packages_and_not_measured_without_it(tmp_path):
    for trial, (cpu_w, gpu_w) in enumerate(((10.0, 300.0), (12.0, 320.0), (11.0, 310.0)), start=1):
        store.write_run(tmp_path, ident(f"2026010{trial}T000000Z-aaaaaa", trial), {"status": "complete"},
                        requests(), telemetry=rapl_rows([cpu_w]) + gpu_rows(gpu_w))
    scan = speed.scan_requests(tmp_path, "m-1")
    trials = metrics.trial_summary(scan)
    cpu, gpu = energy.cell_energy(tmp_path, trials, scan), energy.cell_energy(tmp_path, trials, scan, source="gpu")
    assert gpu["joules_per_token"].item() == pytest.approx(310.0 * 4 / 40) and gpu["watts"].item() == pytest.approx(310.0)
    assert cpu["joules_per_token"].item() == pytest.approx(11.0 * 4 / 40)  # the GPU's rows are not the packages'
    assert gpu["joules_per_token_lo"].item() < 31.0 < gpu["joules_per_token_hi"].item()
    assert "GPU energy per output token" in energy.energy_story(tmp_path, "m-1", cpu, gpu)
    table = energy.energy_table(cpu, gpu).data
    assert "| GPUs |" in table and "| CPU packages |" in table
    empty = energy.cell_energy(tmp_path, trials.clear(), scan, source="gpu")
    assert "**GPU energy: not measured**" in energy.energy_story(tmp_path, "m-1", cpu, empty)
