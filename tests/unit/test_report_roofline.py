"""The bandwidth bound of each cell, from stored runs and a stored bandwidth measurement."""

import pytest

from gaplab.analysis import metrics
from gaplab.measure.records import RequestRecord
from gaplab.report import roofline, speed
from gaplab.storage import store

MS = 1_000_000


def ident(run_id, runtime="rt", users=2, parallel=8, threads=1, trial=1, **kw):
    return {"run_id": run_id, "cell_id": f"{runtime}/c{users}", "cell_key": f"k-{runtime}-{users}", "scenario": "s",
            "hardware_id": "hw", "machine_id": "m-1", "series_id": f"s-{runtime}-{users}", "trial": trial,
            "runtime": runtime, "runtime_kind": "llamacpp", "runtime_version": "v", "model": "m", "quant": "Q8_0",
            "workload": "w", "concurrency": users, "threads": threads, "parallel": parallel, **kw}


def trial(raw, run_id, runtime, users, parallel, tok_s, trial_no, threads=1, kind="llamacpp", **meta):
    """`users` requests of 11 tokens, each decoding at tok_s (10 steps), 90 prompt tokens."""
    span = 10 / tok_s * 1000
    recs = []
    for i in range(users):
        r = RequestRecord(index=i, user=i, warmup=False, scheduled_ns=0, sent_ns=0, first_token_ns=100 * MS,
                          last_token_ns=int((100 + span) * MS), end_ns=int((100 + span) * MS), prompt_tokens=90,
                          completion_tokens=11)
        r.chunks = [(int((100 + k * span / 10) * MS), "content", 1) for k in range(11)]
        recs.append(r)
    store.write_run(raw, ident(run_id, runtime, users, parallel, threads, trial=trial_no, runtime_kind=kind),
                    {"status": "complete", "weight_bytes": 100_000_000, "kv_bytes_per_token": 10_000, **meta}, recs)


def test_each_cell_is_a_share_of_what_bandwidth_allows_at_its_batch(tmp_path):
    for t, v in ((1, 40.0), (2, 41.0), (3, 39.0)):
        trial(tmp_path, f"20260101T00000{t}Z-aaaaa{t}", "batch", 4, 8, v, t)
        trial(tmp_path, f"20260101T00001{t}Z-bbbbb{t}", "single", 4, 1, v * 2, t)
    store.write_bandwidth(tmp_path, ident("20260101T000020Z-cccccc", "stream-triad", 1),
                          [{"repeat": 1, "threads_used": 1, "gb_s": 10.0, "method": "t"},
                           {"repeat": 2, "threads_used": 1, "gb_s": 12.0, "method": "t"},
                           {"repeat": 1, "threads_used": 2, "gb_s": 30.0, "method": "t"}])
    req = speed.measured_requests(tmp_path, "m-1")
    roof = roofline.roofline(speed.estimates(metrics.trial_summary(req)), req, tmp_path, "m-1")
    batch = roof.filter(roof["runtime"] == "batch").row(0, named=True)
    single = roof.filter(roof["runtime"] == "single").row(0, named=True)
    assert batch["batch"] == 4 and single["batch"] == 1  # a single slot decodes one sequence a step
    assert batch["gb_s"] == pytest.approx(11.0)  # one server thread: the one-thread figure, mean of repeats
    assert batch["bandwidth_source"] == "cpu 1 thread"  # rows without a device are the CPU's (before schema 6)
    assert batch["context"] == pytest.approx(90 + 11 / 2)
    step = 100e6 + 4 * 10_000 * 95.5  # weights once, K and V per sequence
    assert batch["bound_tok_s"] == pytest.approx(4 * 11e9 / step)
    assert batch["decode_tok_s"] == pytest.approx(4 * 40.0)
    assert batch["pct"] == pytest.approx(160 / (4 * 11e9 / step) * 100)
    assert batch["pct_lo"] < batch["pct"] < batch["pct_hi"]
    assert single["bound_tok_s"] == pytest.approx(11e9 / (100e6 + 10_000 * 95.5))


def test_without_a_bandwidth_or_stored_traffic_there_is_no_roofline(tmp_path):
    trial(tmp_path, "20260101T000001Z-aaaaa1", "batch", 4, 8, 40.0, 1)
    req = speed.measured_requests(tmp_path, "m-1")
    assert roofline.roofline(speed.estimates(metrics.trial_summary(req)), req, tmp_path, "m-1").is_empty()


def gpu_rows(gb_s, *devices):
    return [{"repeat": 1, "threads_used": 0, "gb_s": v, "method": "NVML", "device": d} for v, d in zip(gb_s, devices)]


def test_cells_use_the_gpu_figure_for_the_share_of_the_model_in_gpu_memory(tmp_path):
    loaded = 100_000_000
    for t in (1, 2):
        trial(tmp_path, f"20260101T00000{t}Z-aaaaa{t}", "ongpu", 4, 8, 40.0 + t, t, kind="ollama",
              model_bytes_loaded=loaded, model_bytes_gpu=loaded)
        trial(tmp_path, f"20260101T00001{t}Z-bbbbb{t}", "oncpu", 4, 8, 4.0 + t, t, threads=2, kind="ollama",
              model_bytes_loaded=loaded, model_bytes_gpu=0)
        trial(tmp_path, f"20260101T00002{t}Z-ccccc{t}", "unsaid", 4, 8, 40.0 + t, t, kind="openai")  # says nothing
        trial(tmp_path, f"20260101T00003{t}Z-fffff{t}", "split", 4, 8, 20.0 + t, t, threads=2, kind="ollama",
              model_bytes_loaded=loaded, model_bytes_gpu=loaded * 3 // 4)
        trial(tmp_path, f"20260101T00004{t}Z-ggggg{t}", "cpubuild", 4, 8, 4.0 + t, t)  # gaplab's llama.cpp: CPU
    cpu = [{"repeat": 1, "threads_used": t, "gb_s": v, "method": "t", "device": "cpu"}
           for t, v in ((1, 10.0), (2, 30.0))]
    store.write_bandwidth(tmp_path, ident("20260101T000030Z-dddddd", "stream-triad", 1),  # older: not used
                          cpu + gpu_rows([500.0], "gpu:0 NVIDIA GeForce RTX 4090"))
    store.write_bandwidth(tmp_path, ident("20260101T000031Z-eeeeee", "stream-triad", 1),
                          cpu + gpu_rows([2000.0, 1008.0], "gpu:1 NVIDIA H100 PCIe", "gpu:0 NVIDIA GeForce RTX 4090"))
    req = speed.measured_requests(tmp_path, "m-1")
    roof = roofline.roofline(speed.estimates(metrics.trial_summary(req)), req, tmp_path, "m-1")
    used = {r["runtime"]: (r["gb_s"], r["bandwidth_source"]) for r in roof.iter_rows(named=True)}
    rtx = (1008.0, "gpu:0 NVIDIA GeForce RTX 4090")  # the first GPU's, of the newest run
    mixed = 1 / (0.75 / 1008.0 + 0.25 / 30.0)  # three quarters read at the GPU's bandwidth, the rest at the CPU's
    assert used == {"ongpu": rtx, "unsaid": rtx, "oncpu": (30.0, "cpu 2 threads"), "cpubuild": (10.0, "cpu 1 thread"),
                    "split": (pytest.approx(mixed), "75% on gpu:0 NVIDIA GeForce RTX 4090, the rest on cpu 2 threads")}
    ongpu = roof.filter(roof["runtime"] == "ongpu").row(0, named=True)
    assert ongpu["bound_tok_s"] == pytest.approx(4 * 1008e9 / (100e6 + 4 * 10_000 * 95.5))
    runs = roofline.bandwidth_runs(tmp_path, "m-1")
    assert runs.filter(runs["device"] == "gpu:0 NVIDIA GeForce RTX 4090")["gb_s"].to_list() == [[500.0], [1008.0]]
    assert runs.filter(runs["device"] == "cpu")["threads_used"].to_list() == [1, 2, 1, 2]
