"""Where the time goes: parts from hand-built requests with known server figures, vLLM's and
SGLang's parts from their histograms' deltas over a trial (by the engine a run recorded, whatever
its kind), and waterfalls that add up."""

import json

import polars as pl
import pytest

from gaplab.measure.records import RequestRecord
from gaplab.report import decompose, speed
from gaplab.storage import store

MS = 1_000_000


def ident(run_id, runtime="rt", kind="llamacpp", quant="Q8_0", trial=1, series="s1"):
    return {"run_id": run_id, "cell_id": f"{runtime}/{quant}", "cell_key": f"k-{runtime}-{quant}", "scenario": "s",
            "hardware_id": "hw", "machine_id": "m-1", "series_id": f"{series}-{runtime}-{quant}", "trial": trial,
            "runtime": runtime, "runtime_kind": kind, "runtime_version": "v", "model": "m", "quant": quant,
            "workload": "w", "concurrency": 2, "threads": 1, "parallel": 8}


def request(i, scheduled, sent, first, last, end, tokens, timings=None):
    """Times in ms; one token per chunk from first to last."""
    r = RequestRecord(index=i, user=i, warmup=False, scheduled_ns=scheduled * MS, sent_ns=sent * MS,
                      first_token_ns=first * MS, last_token_ns=last * MS, end_ns=end * MS, completion_tokens=tokens,
                      server_timings=timings)
    step = (last - first) / (tokens - 1)
    r.chunks = [(int((first + k * step) * MS), "content", 1) for k in range(tokens)]
    return r


def test_a_request_the_server_timed_splits_into_parts_that_add_up(tmp_path):
    # sent 2 ms late; 300 ms to the first token of which 100 ms prompt; 11 tokens over 500 ms
    timed = request(0, 0, 2, 302, 802, 805, 11, {"prompt_n": 8, "prompt_ms": 100.0, "predicted_n": 11,
                                                 "predicted_ms": 490.0})
    store.write_run(tmp_path, ident("20260101T000000Z-aaaaaa"), {"status": "complete"}, [timed])
    r = decompose.request_parts(speed.measured_requests(tmp_path)).row(0, named=True)
    assert r["timed_by"] == "server"
    assert r["client_queue"] == pytest.approx(2)
    assert r["server_queue"] == pytest.approx(200)  # TTFT 300 - prompt 100: waiting for a slot
    assert r["prompt"] == pytest.approx(100) and r["ttft_other"] == pytest.approx(0)
    assert r["first_decode"] == pytest.approx(49)  # 490 ms over 10 steps
    assert r["decode_rest"] == pytest.approx(441)
    assert r["tail"] == pytest.approx(803 - 300 - 490)  # E2E - TTFT - server decode
    assert sum(r[p] for p in decompose.PARTS) == pytest.approx(r["latency"]) == pytest.approx(805)
    check = decompose.check(speed.measured_requests(tmp_path))
    assert check["requests"] == 1 and check["decode_vs_span_pct"] == pytest.approx(2.0)  # 490 against 500


def test_a_server_that_reports_nothing_leaves_only_the_clients_parts(tmp_path):
    store.write_run(tmp_path, ident("20260101T000000Z-aaaaaa", kind="openai"), {"status": "complete"},
                    [request(0, 0, 0, 300, 800, 800, 11)])
    r = decompose.request_parts(speed.measured_requests(tmp_path)).row(0, named=True)
    assert r["timed_by"] == "client" and r["server_queue"] is None and r["prompt"] is None
    assert r["ttft_other"] == pytest.approx(300) and r["first_decode"] == pytest.approx(50)
    assert r["tail"] == pytest.approx(0)
    assert decompose.check(speed.measured_requests(tmp_path)) == {}


def _histogram_rows(t_ns, queue_s, prefill_s, decode_s, tokens, count):
    """vLLM's histogram _sum and _count samples at one instant, split over two label sets."""
    rows = []
    for name, total in (("request_queue_time_seconds", queue_s), ("request_prefill_time_seconds", prefill_s),
                        ("request_decode_time_seconds", decode_s), ("request_generation_tokens", tokens)):
        for half, engine in ((0.5, "0"), (0.5, "1")):
            labels = json.dumps({"engine": engine})
            rows += [{"t_ns": t_ns, "source": "metrics", "metric": f"vllm:{name}_sum", "labels": labels,
                      "value": total * half},
                     {"t_ns": t_ns, "source": "metrics", "metric": f"vllm:{name}_count", "labels": labels,
                      "value": count * half}]
    return rows


def test_vllm_parts_come_from_the_change_of_its_histograms_over_the_trial(tmp_path):
    recs = [request(i, 0, 0, 300, 800, 800, 11) for i in range(2)]
    # before the trial: 5 requests already counted; after: 2 more, 0.02 s queue, 0.2 s prefill, 0.98 s decode
    tele = _histogram_rows(1, 1.0, 1.0, 3.0, 55, 5) + _histogram_rows(2, 1.02, 1.2, 3.98, 77, 7)
    store.write_run(tmp_path, ident("20260101T000000Z-vvvvvv", runtime="v", kind="vllm"), {"status": "complete"},
                    recs, telemetry=tele)
    t = decompose.trial_parts(speed.measured_requests(tmp_path), tmp_path).row(0, named=True)
    assert t["timed_by"] == "server (trial histograms)"
    assert t["server_queue"] == pytest.approx(10) and t["prompt"] == pytest.approx(100)  # per request, ms
    assert t["ttft_other"] == pytest.approx(300 - 10 - 100)
    assert t["first_decode"] == pytest.approx(49)  # 490 ms per request over 11 - 1 steps
    assert t["decode_rest"] == pytest.approx(441) and t["tail"] == pytest.approx(800 - 300 - 490)
    assert sum(t[p] for p in decompose.PARTS) == pytest.approx(t["latency"])


def _cell(tmp_path, runtime, quant, trial, wait, prompt):
    ttft = wait + prompt
    recs = [request(i, 0, 0, ttft, ttft + 500, ttft + 500, 11,
                    {"prompt_ms": float(prompt), "predicted_n": 11, "predicted_ms": 500.0}) for i in range(2)]
    store.write_run(tmp_path, ident(f"20260101T00000{trial}Z-{runtime}{quant}", runtime, quant=quant, trial=trial),
                    {"status": "complete"}, recs)


def test_a_waterfall_walks_from_a_to_b_and_each_part_carries_its_interval(tmp_path):
    for trial, (wait_a, wait_b) in enumerate(((0, 900), (2, 1000), (4, 1100)), 1):
        _cell(tmp_path, "batch", "F16", trial, wait_a, 150)
        _cell(tmp_path, "single", "F16", trial, wait_b, 100 + trial)
    parts = decompose.trial_parts(speed.measured_requests(tmp_path), tmp_path)
    w = decompose.waterfall(parts, "m", "w", 2, "batch · F16", "single · F16", "ttft")
    assert w["step"].to_list() == ["batch · F16", "server queue", "prompt processing", "front end + transport",
                                   "single · F16"]
    queue = w.row(1, named=True)
    assert queue["delta"] == pytest.approx(1000 - 2) and queue["lo"] < 998 < queue["hi"]
    assert w.row(2, named=True)["delta"] == pytest.approx(102 - 150)
    assert w["end"][-2] == pytest.approx(w["end"][-1])  # the parts lead from a's total to b's
    assert w["delta"][-1] == pytest.approx(w.filter(pl.col("kind") == "part")["delta"].sum())
    assert decompose.waterfall(parts, "m", "w", 8, "batch · F16", "single · F16").is_empty()


def test_pairs_take_the_largest_stated_gap_for_each_two_runtimes():
    def row(a, b, ratio, verdict="A better", users=8, metric="ttft_p50_ms", across=False):
        return {"kind": "faster", "metric": metric, "verdict": verdict, "users": users, "model": "m",
                "workload": "w", "a": a, "b": b, "ratio": ratio, "across_kinds": across}
    claims = pl.DataFrame([row("x · Q4", "y · Q4", 0.5), row("x · F16", "y · F16", 0.2),
                           row("x · Q4", "y · Q4", 0.1, users=4),  # not at the most users
                           row("x · Q4", "z · B", 0.9, across=True),
                           row("x · F16", "z · B", 0.05, verdict="undecided", across=True),
                           row("x · F16", "x · Q4", 0.3)])  # one runtime, two quants: not a runtime gap
    got = [(p["a"], p["b"]) for p in decompose.pairs(claims)]
    assert got == [("x · Q4", "z · B"), ("x · F16", "y · F16")]


def test_the_waterfall_sentence_names_the_parts_that_differ_and_only_those(tmp_path):
    from gaplab.report import time_prose

    for trial, (wait_a, wait_b) in enumerate(((0, 900), (2, 1000), (4, 1100)), 1):
        _cell(tmp_path, "batch", "F16", trial, wait_a, 150)
        _cell(tmp_path, "single", "F16", trial, wait_b, 150 + trial % 2)
    parts = decompose.trial_parts(speed.measured_requests(tmp_path), tmp_path)
    text = time_prose.waterfall_story(decompose.waterfall(parts, "m", "w", 2, "batch · F16", "single · F16"))
    assert "single · F16's mean TTFT is 999 ms higher" in text  # 998 of queue, 0.7 of prompt
    assert "server queue +998 ms" in text and "prompt processing" not in text  # 150 or 151 ms: no difference


def test_vllm_deltas_start_after_the_warmup_requests(tmp_path):
    warm = request(9, 0, 0, 100, 500, 1500, 11)  # ends at 1.5 s, between the first two samples
    warm.warmup = True
    recs = [warm] + [request(i, 2000, 2000, 2300, 2800, 2800, 11) for i in range(2)]
    ms = 1_000_000
    # at 1 s the warmup is still running; by 2 s it is counted (1 request); by 3 s the 2 measured ones too
    tele = (_histogram_rows(1000 * ms, 0.0, 0.0, 0.0, 0, 0) + _histogram_rows(2000 * ms, 5.0, 5.0, 5.0, 11, 1)
            + _histogram_rows(3000 * ms, 5.02, 5.2, 5.98, 33, 3))
    store.write_run(tmp_path, ident("20260101T000000Z-vvvvvv", runtime="v", kind="vllm"), {"status": "complete"},
                    recs, telemetry=tele)
    means = decompose.server_means(tmp_path, ["20260101T000000Z-vvvvvv"], "vllm").row(0, named=True)
    assert means["srv_requests"] == 2  # the warmup request is not in the delta
    assert means["srv_server_queue"] == pytest.approx(10) and means["srv_prompt"] == pytest.approx(100)
    assert means["srv_decode"] == pytest.approx(490) and means["srv_tokens"] == pytest.approx(11)
    assert means["srv_prefix_hit_pct"] is None  # no prefix-cache counters among these samples


def test_a_vllm_attached_by_url_is_read_by_the_engine_it_was_identified_as(tmp_path):
    recs = [request(i, 0, 0, 300, 800, 800, 11) for i in range(2)]
    tele = _histogram_rows(1, 1.0, 1.0, 3.0, 55, 5) + _histogram_rows(2, 1.02, 1.2, 3.98, 77, 7)
    tele += [{"t_ns": t, "source": "metrics", "metric": f"vllm:prefix_cache_{name}_total", "labels": "", "value": v}
             for t, name, v in ((1, "queries", 100), (1, "hits", 10), (2, "queries", 132), (2, "hits", 34))]
    for run_id, engine in (("20260101T000000Z-aaaaaa", "vllm"), ("20260101T000000Z-bbbbbb", None)):
        store.write_run(tmp_path, ident(run_id, runtime=f"o-{run_id[-1]}", kind="openai"),
                        {"status": "complete", "engine": engine}, recs, telemetry=tele)
    t = decompose.trial_parts(speed.measured_requests(tmp_path), tmp_path).sort("run_id")
    identified, unknown = t.row(0, named=True), t.row(1, named=True)
    assert identified["engine"] == "vllm" and identified["timed_by"] == "server (trial histograms)"
    assert identified["server_queue"] == pytest.approx(10) and identified["prompt"] == pytest.approx(100)
    means = decompose.server_means(tmp_path, ["20260101T000000Z-aaaaaa"], "vllm").row(0, named=True)
    assert means["srv_prefix_hit_pct"] == pytest.approx(75)  # 24 of the 32 tokens queried in the trial
    # the same samples from a server nothing identified: the client's parts only
    assert unknown["engine"] is None and unknown["timed_by"] == "client" and unknown["server_queue"] is None
    table = decompose.sources([identified["engine"], unknown["engine"]])
    assert table.columns == ["part", "vLLM", "unidentified server"]
    assert table.row(1, named=True)["vLLM"].startswith("measured (server histogram")


def _sglang_rows(t_ns, queue_s, ttft_s, e2e_s, count, generated):
    labels = json.dumps({"model_name": "m"})
    rows = [{"t_ns": t_ns, "source": "metrics", "metric": f"sglang:{name}_{end}", "labels": labels, "value": v}
            for name, total in (("queue_time_seconds", queue_s), ("time_to_first_token_seconds", ttft_s),
                                ("e2e_request_latency_seconds", e2e_s))
            for end, v in (("sum", total), ("count", count))]
    counters = (("sglang:generation_tokens_total", generated), ("sglang:num_requests_total", count),
                ("sglang:prompt_tokens_total", 10 * count), ("sglang:cached_tokens_total", 4 * count))
    return rows + [{"t_ns": t_ns, "source": "metrics", "metric": name, "labels": labels, "value": v}
                   for name, v in counters]


def test_sglang_parts_come_from_its_queue_ttft_and_e2e_histograms_and_token_counters(tmp_path):
    recs = [request(i, 0, 0, 300, 800, 800, 11) for i in range(2)]
    # over the trial: 2 requests, 0.02 s queue, 0.22 s to the first token, 1.2 s end to end, 22 tokens
    tele = _sglang_rows(1, 1.0, 2.0, 9.0, 5, 50) + _sglang_rows(2, 1.02, 2.22, 10.2, 7, 72)
    store.write_run(tmp_path, ident("20260101T000000Z-ssssss", runtime="s", kind="openai"),
                    {"status": "complete", "engine": "sglang"}, recs, telemetry=tele)
    t = decompose.trial_parts(speed.measured_requests(tmp_path), tmp_path).row(0, named=True)
    assert t["timed_by"] == "server (trial histograms)"
    assert t["server_queue"] == pytest.approx(10) and t["prompt"] == pytest.approx(100)  # TTFT 110 - queue 10
    assert t["first_decode"] == pytest.approx(49) and t["decode_rest"] == pytest.approx(441)  # 490 ms, 11 tokens
    assert sum(t[p] for p in decompose.PARTS) == pytest.approx(t["latency"])
    means = decompose.server_means(tmp_path, ["20260101T000000Z-ssssss"], "sglang").row(0, named=True)
    assert means["srv_requests"] == 2 and means["srv_prefix_hit_pct"] == pytest.approx(40)  # 8 of 20 tokens
