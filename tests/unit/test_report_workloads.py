"""The workloads page's frames (report/workloads.py) from runs written as real Parquet with
store.write_run and read back the way the page reads them (speed.measured_requests of the
workloads study): keep-up and its verdict, goodput within the SLO, short requests' figures,
the lag flag, the knee and the claims.

Each trial is drawn by a small model of a server: answers that take a fixed time whatever is
in flight (a server that keeps up), or a single queue that serves one request at a time at a
fixed pace (one that does not)."""

import hashlib
import random

import numpy as np
import polars as pl
import pytest

from gaplab.analysis import metrics
from gaplab.measure.records import RequestRecord
from gaplab.report import speed, workloads
from gaplab.storage import run_record, store

MS = 1_000_000
T0 = 5_000_000_000_000  # perf_counter_ns-like origin
SLO = [{"metric": "ttft", "max_ms": 1000.0, "percentile": 90.0},
       {"metric": "tpot", "max_ms": 100.0, "percentile": 90.0}]
LLAMA_FLAGS = {"parallel": 8, "threads": 1, "ctx_size": 4096, "kv_unified": True, "extra_args": []}


def answer(i, scheduled, sent, start, ttft_ms, tokens, tpot_ms, warmup=False, tag=None, target=None,
           error=None, gap_ms=None, prompt=100, computed=None):
    """One request: sent at `sent` (ns), its first token ttft_ms after `start` (when the server
    took it up), then tokens - 1 more every tpot_ms (gap_ms: one stall of that length instead
    of the first step)."""
    r = RequestRecord(index=i, user=i, warmup=warmup, scheduled_ns=int(scheduled), sent_ns=int(sent), tag=tag,
                      target_prompt_tokens=target if target is not None else prompt, target_output_tokens=tokens)
    if error:
        r.error, r.end_ns = error, int(sent + 50 * MS)
        return r
    first = int(start + ttft_ms * MS)
    times = [first]
    for k in range(1, tokens):
        times.append(times[-1] + int((gap_ms if (k == 1 and gap_ms) else tpot_ms) * MS))
    r.chunks = [(t, "content", 1) for t in times]
    r.first_token_ns, r.last_token_ns, r.end_ns = times[0], times[-1], times[-1] + MS
    r.completion_tokens, r.prompt_tokens = tokens, prompt
    r.server_timings = {"prompt_n": prompt if computed is None else computed, "prompt_ms": 5.0,
                        "predicted_n": tokens, "predicted_ms": (times[-1] - times[0]) / MS or 1.0}
    return r


def open_trial(rate, n, seed, service_ms=None, pace_ms=None, ttft_ms=100.0, lag_ms=1.0, tokens=8, late=()):
    """An open-loop trial at `rate` (constant arrivals). service_ms: every answer takes about that
    long, however many are in flight (keeps up). pace_ms: one answer at a time, each about that
    long (a queue grows when pace_ms > 1000 / rate). late: indices sent 80 ms behind schedule."""
    rng = random.Random(seed)
    recs, free = [], 0
    for k in range(n):
        due = T0 + int(k / rate * 1e9)
        sent = due + int((80.0 if k in late else lag_ms) * MS)
        if pace_ms is None:
            start, took = sent, service_ms * rng.uniform(0.97, 1.03)
        else:
            start, took = max(sent, free), pace_ms * rng.uniform(0.99, 1.01)
        tpot = (took - ttft_ms) / (tokens - 1)
        r = answer(k + 1, due, sent, start, ttft_ms, tokens, tpot)
        free = r.end_ns
        recs.append(r)
    warm = answer(0, T0 - 2_000 * MS, T0 - 2_000 * MS, T0 - 2_000 * MS, ttft_ms, tokens, 10.0, warmup=True)
    return [warm] + recs


def write(raw, recs, runtime="rt", trial=1, cell_key=None, rate=None, concurrency=None, kind="distribution",
          workload="chat", slo=SLO, max_lag_ms=10.0, flags=None, series="s1", model="m", machine="m-1"):
    """One complete trial of one cell, as `gaplab run` stores it (run metadata: load and cell)."""
    cell_key = cell_key or f"{runtime}-{workload}-{rate}-{concurrency}"
    run_id = f"2026010{trial}T000000Z-{hashlib.sha1(f'{cell_key}:{trial}:{series}'.encode()).hexdigest()[:6]}"
    ident = {"run_id": run_id, "cell_id": f"{runtime}/{model}/Q8_0/{workload}", "cell_key": cell_key,
             "scenario": "s", "hardware_id": "hw", "machine_id": machine, "series_id": series, "trial": trial,
             "runtime": runtime, "runtime_kind": "llamacpp", "runtime_version": "v", "model": model,
             "quant": "Q8_0", "workload": workload, "concurrency": concurrency, "threads": 1, "parallel": 8,
             "rate": rate, "workload_kind": kind}
    load = {"slo": slo, **({"max_lag_ms": max_lag_ms} if max_lag_ms is not None else {})}
    meta = {"status": "complete", "load": load, "cell": {"flags": flags if flags is not None else LLAMA_FLAGS}}
    store.write_run(raw, ident, meta, recs)
    return run_id


def frames(raw):
    """What the page computes: per-trial rows and per-cell estimates of the workloads study."""
    req = speed.measured_requests(raw, study="workloads")
    tr = workloads.trials(req, workloads.run_settings(raw))
    return tr, workloads.estimates(tr)


def by(frame, **kw):
    rows = frame.filter(*[pl.col(k) == v for k, v in kw.items()])
    assert rows.height == 1, (kw, rows)
    return rows.row(0, named=True)


# ------------------------------------------------------------------------------ keep-up


def test_keep_up_is_near_one_at_the_schedules_pace_and_falls_when_a_queue_grows(tmp_path):
    rate, n = 4.0, 20
    for t in (1, 2, 3):  # answers take 400 ms each, whatever is in flight
        write(tmp_path, open_trial(rate, n, seed=t, service_ms=400), runtime="keeps", trial=t, rate=rate)
    for t, pace in ((1, 500), (2, 520)):  # one at a time, 500 ms each: 2 answers/s for 4 arriving
        write(tmp_path, open_trial(rate, n, seed=t, pace_ms=pace), runtime="queue", trial=t, rate=rate)
    for t, pace in ((1, 1000 / rate / 0.84), (2, 1000 / rate / 0.98)):  # trials either side of the bar
        write(tmp_path, open_trial(rate, n, seed=t, pace_ms=pace), runtime="edge", trial=t, rate=rate)
    tr, est = frames(tmp_path)
    assert tr.height == 7 and set(tr["requests"]) == {n}  # the warmup rows are left out
    offered = (n - 1) / ((n - 1) / rate)
    assert tr["offered_rps"].to_list() == pytest.approx([offered] * 7)
    keeps = tr.filter(pl.col("runtime") == "keeps")["keep_up"].to_list()
    assert all(0.97 < k < 1.03 for k in keeps), keeps
    for pace in (500, 520):
        row = tr.filter((pl.col("runtime") == "queue") & (pl.col("trial") == (1 if pace == 500 else 2)))
        # answers leave at the queue's pace: 1000 / pace per second, against `rate` arriving
        assert row["achieved_rps"][0] == pytest.approx(1000 / pace, rel=0.02)
        assert row["keep_up"][0] == pytest.approx(1000 / pace / rate, rel=0.02)
    assert by(est, runtime="keeps")["sustained"] == "sustained"
    assert by(est, runtime="keeps")["keep_up_lo"] > workloads.KEEP_UP
    assert by(est, runtime="queue")["sustained"] == "overloaded"
    assert by(est, runtime="queue")["keep_up_hi"] <= workloads.KEEP_UP
    edge = by(est, runtime="edge")
    assert edge["sustained"] == "undecided" and edge["keep_up_lo"] < workloads.KEEP_UP < edge["keep_up_hi"]


def test_one_trial_gives_no_keep_up_verdict_and_closed_loop_cells_none(tmp_path):
    write(tmp_path, open_trial(4.0, 12, seed=1, service_ms=300), runtime="once", rate=4.0)
    write(tmp_path, open_trial(4.0, 12, seed=1, service_ms=300), runtime="users", concurrency=4,
          kind="long-prompt-mix", workload="mix")
    tr, est = frames(tmp_path)
    assert by(est, runtime="once")["sustained"] == "no interval"
    assert by(est, runtime="users")["sustained"] is None
    # users have no schedule to keep up with: no pace figures that could join a rate cell's pool
    users = by(tr, runtime="users")
    assert users["keep_up"] is None and users["offered_rps"] is None and users["achieved_rps"] is None
    assert by(tr, runtime="once")["keep_up"] == pytest.approx(1.0, abs=0.05)


def test_without_objectives_no_rate_is_claimed_within_an_slo(tmp_path):
    for t in (1, 2, 3):
        write(tmp_path, open_trial(1.0, 12, seed=t, service_ms=300), runtime="rt", trial=t, rate=1.0, slo=[])
    tr, est = frames(tmp_path)
    assert by(est, runtime="rt")["sustained"] == "sustained" and by(est, runtime="rt")["slo_verdict"] is None
    assert workloads.claims(tr, est).filter(pl.col("kind") == "sustains").is_empty()
    assert "goodput (req/s answered; no SLO stated)" in set(workloads.sweep_panels(est)["panel"])


def test_prompt_computed_is_missing_where_the_server_does_not_count_it(tmp_path):
    recs = open_trial(1.0, 6, seed=1, service_ms=300)
    for r in recs:
        r.server_timings = None  # vLLM reports no prompt_n
    write(tmp_path, recs, runtime="vllm", rate=1.0)
    write(tmp_path, open_trial(1.0, 6, seed=1, service_ms=300), runtime="llama", rate=1.0)
    half = open_trial(1.0, 6, seed=1, service_ms=300)
    for r in half[::2]:
        r.server_timings = None  # some rows counted, some not: the share is of the counted rows only
    write(tmp_path, half, runtime="some", rate=1.0)
    tr, _ = frames(tmp_path)
    assert by(tr, runtime="vllm")["prompt_computed"] is None
    assert by(tr, runtime="llama")["prompt_computed"] == pytest.approx(1.0)
    assert by(tr, runtime="some")["prompt_computed"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ goodput and SLO


def test_goodput_counts_only_requests_within_every_objective_per_second_of_span(tmp_path):
    # (ttft ms, tpot ms, error): within both; over TTFT only; over TPOT only; failed
    kinds = [(200, 20, None)] * 5 + [(1500, 20, None)] * 3 + [(200, 150, None)] * 2 + [(200, 20, "HTTP 500")]
    recs = [answer(0, T0, T0, T0, 100, 8, 10, warmup=True)]
    for k, (ttft, tpot, err) in enumerate(kinds):
        t = T0 + k * 300 * MS
        recs.append(answer(k + 1, t, t, t, ttft, 4 + k, tpot, error=err))
    write(tmp_path, recs, rate=2.0)
    row = frames(tmp_path)[0].row(0, named=True)
    measured = recs[1:]
    span_s = (max(r.end_ns for r in measured) - min(r.sent_ns for r in measured)) / 1e9
    good = [r for r, (ttft, tpot, err) in zip(measured, kinds) if ttft <= 1000 and tpot <= 100 and not err]
    assert len(good) == 5  # the over-TTFT ones are within TPOT, and still not counted
    assert row["span_s"] == pytest.approx(span_s)
    assert row["goodput_rps"] == pytest.approx(len(good) / span_s)
    assert row["goodput_tok_s"] == pytest.approx(sum(r.completion_tokens for r in good) / span_s)
    # without objectives every answered request is good
    other = tmp_path / "no-slo"
    write(other, recs, rate=2.0, slo=[])
    assert frames(other)[0]["goodput_rps"][0] == pytest.approx(10 / span_s)


def _slo_cell(raw, runtime, ttft_ms, tpot_ms, trials=3):
    for t in range(1, trials + 1):
        recs = [answer(0, T0, T0, T0, 100, 8, 10, warmup=True)]
        for k in range(10):
            s = T0 + k * 500 * MS
            recs.append(answer(k + 1, s, s, s, ttft_ms * (1 + 0.02 * t) * (1 + 0.01 * k), 6, tpot_ms))
        write(raw, recs, runtime=runtime, trial=t, rate=1.0)


def test_slo_verdict_from_each_objectives_percentile_interval(tmp_path):
    _slo_cell(tmp_path, "fast", ttft_ms=200, tpot_ms=20)
    _slo_cell(tmp_path, "late", ttft_ms=2500, tpot_ms=20)  # TTFT p90 far over 1000 ms, TPOT within
    _slo_cell(tmp_path, "slowdecode", ttft_ms=200, tpot_ms=400)  # TPOT p90 far over 100 ms
    _slo_cell(tmp_path, "near", ttft_ms=1000 / 1.1, tpot_ms=20)  # p90 across trials straddles 1000 ms
    tr, est = frames(tmp_path)
    fast = by(est, runtime="fast")
    assert fast["slo_verdict"] == "met" and fast["ttft_p90_ms_hi"] <= 1000 and fast["tpot_p90_ms_hi"] <= 100
    late = by(est, runtime="late")
    assert late["slo_verdict"] == "missed" and late["ttft_p90_ms_lo"] > 1000
    assert by(est, runtime="slowdecode")["slo_verdict"] == "missed"
    near = by(est, runtime="near")
    assert near["ttft_p90_ms_lo"] < 1000 < near["ttft_p90_ms_hi"] and near["slo_verdict"] == "undecided"
    # the per-trial percentile is the trial's own, linearly interpolated
    one = tr.filter((pl.col("runtime") == "late") & (pl.col("trial") == 2))
    ttfts = [2500 * 1.04 * (1 + 0.01 * k) for k in range(10)]
    assert one["ttft_p90_ms"][0] == pytest.approx(np.percentile(ttfts, 90), rel=1e-4)


# ------------------------------------------------------------------------------ knee and sustains


def _sweep(raw, runtime, cells):
    """cells: rate -> (service_ms or None, pace_ms or None, ttft_ms), 3 trials each."""
    for rate, (service, pace, ttft) in cells.items():
        for t in (1, 2, 3):
            write(raw, open_trial(rate, 16, seed=t, service_ms=service, pace_ms=pace, ttft_ms=ttft),
                  runtime=runtime, trial=t, rate=rate)


def test_knee_stops_at_the_first_overloaded_rate_and_the_slo_rate_is_sustained_and_within(tmp_path):
    _sweep(tmp_path, "rt", {
        1.0: (400, None, 150),   # keeps up, within the SLO
        2.0: (400, None, 200),   # keeps up, within the SLO
        3.0: (2000, None, 1800),  # keeps up (answers at the arrival pace), TTFT over 1000 ms
        4.0: (None, 600, 150),   # a queue: overloaded
        8.0: (400, None, 150),   # looks sustained again, after an overloaded rate: not the knee
    })
    _sweep(tmp_path, "never", {1.0: (3000, None, 2500), 2.0: (None, 900, 150)})
    tr, est = frames(tmp_path)
    verdicts = {r["rate"]: (r["sustained"], r["slo_verdict"])
                for r in est.filter(pl.col("runtime") == "rt").iter_rows(named=True)}
    # at 4/s the queued requests' TTFT holds their wait in the queue: over the SLO too
    assert verdicts == {1.0: ("sustained", "met"), 2.0: ("sustained", "met"), 3.0: ("sustained", "missed"),
                        4.0: ("overloaded", "missed"), 8.0: ("sustained", "met")}
    k = workloads.knee(est)
    rt = by(k, runtime="rt")
    assert rt["max_sustained_rps"] == 3.0 and rt["slo_rps"] == 2.0
    at2 = by(est, runtime="rt", rate=2.0)
    assert rt["goodput_rps"] == pytest.approx(at2["goodput_rps"]) and rt["goodput_rps_lo"] == at2["goodput_rps_lo"]
    assert rt["rates"] == "1, 2, 3, 4, 8"
    never = by(k, runtime="never")
    assert never["max_sustained_rps"] == 1.0 and never["slo_rps"] is None

    rows = workloads.claims(tr, est)
    sustains = rows.filter(pl.col("kind") == "sustains")
    assert sorted(sustains["a"].to_list()) == ["never", "rt"]  # one per runtime of the sweep
    s = by(sustains, a="rt")
    assert s["value_a"] == 2.0 and s["value_b"] == 3.0 and s["verdict"] == "within SLO"
    assert "rt sustains 2 req/s within the SLO" in s["text"]
    n = by(sustains, a="never")
    assert n["verdict"] == "none" and "no rate tried on chat (1, 2 req/s) is both sustained" in n["text"]
    assert rows.filter(pl.col("kind") == "switch").height == 0  # a rate sweep is no switch pair
    assert rows["claim_id"].n_unique() == rows.height



def test_the_pages_panels_and_sentences_follow_the_verdicts(tmp_path):
    from gaplab.report import workloads_prose

    _sweep(tmp_path, "rt", {1.0: (400, None, 150), 4.0: (None, 600, 150)})
    tr, est = frames(tmp_path)
    panels = workloads.sweep_panels(est)
    # per rate: keep-up, each SLO objective, goodput; the bounds drawn are 0.9 and the objectives' limits
    assert panels.height == 2 * 4 and set(panels["rate"]) == {1.0, 4.0}
    bound = {r["panel"]: r["bound"] for r in panels.filter(pl.col("rate") == 1.0).iter_rows(named=True)}
    assert bound == {"keep-up (answers ÷ arrivals)": workloads.KEEP_UP, "TTFT p90 (ms)": 1000.0,
                     "TPOT p90 (ms)": 100.0, "goodput (req/s within the SLO)": None}
    keep4 = by(panels, rate=4.0, panel="keep-up (answers ÷ arrivals)")
    assert keep4["verdict"] == "overloaded" and keep4["hi"] < workloads.KEEP_UP and "–" in keep4["interval"]
    assert by(panels, rate=1.0, panel="TTFT p90 (ms)")["verdict"] == "within the bound"
    story = workloads_prose.sweep_story(est, workloads.knee(est))
    assert "1 req/s sustained" in story and "4 req/s overloaded" in story
    assert "rt's knee: the highest rate it sustained, every lower one too, is 1 req/s" in story
    assert "TTFT p90 ≤ 1,000 ms and TPOT p90 ≤ 100 ms" in story
    assert "No trial passed" in workloads_prose.lag_story(est)
    # a runtime whose lowest rate is overloaded has no knee, and the page says why, not "none sustained"
    _sweep(tmp_path, "slow", {1.0: (None, 1500, 150), 2.0: (400, None, 150)})
    tr, est = frames(tmp_path)
    story = workloads_prose.sweep_story(est, workloads.knee(est))
    assert "slow: no knee, since its lowest rate (1 req/s) is overloaded" in story and "2 req/s sustained" in story
    # nothing measured: the page says how to measure it
    assert workloads_prose.sweep_story(pl.DataFrame(), pl.DataFrame()) == workloads_prose.NOTHING
    assert workloads.sweep_panels(pl.DataFrame()).is_empty()


# ------------------------------------------------------------------------------ short and long requests


def test_short_request_figures_come_from_short_rows_only(tmp_path):
    rng = random.Random(3)
    recs, short, long_ = [], [], []
    for k in range(16):
        is_long = k % 4 == 0
        s = T0 + k * 200 * MS
        ttft = rng.uniform(1500, 2500) if is_long else rng.uniform(40, 120)
        gap = rng.uniform(600, 900) if is_long else rng.uniform(20, 200)
        r = answer(k, s, s, s, ttft, 6, 15, tag="long" if is_long else "short", gap_ms=gap,
                   target=1024 if is_long else 32, prompt=1040 if is_long else 45)
        (long_ if is_long else short).append(r)
        recs.append(r)
    write(tmp_path, recs, concurrency=4, kind="long-prompt-mix", workload="mix")
    row = frames(tmp_path)[0].row(0, named=True)
    st_ttft = [(r.first_token_ns - r.sent_ns) / MS for r in short]
    st_gap = [r.max_gap_ns / MS for r in short]
    assert max(st_gap) < 250  # the long rows' stalls (600 ms and more) stay out
    assert row["short_ttft_p50_ms"] == pytest.approx(np.median(st_ttft))
    assert row["short_ttft_p99_ms"] == pytest.approx(np.percentile(st_ttft, 99))
    assert row["short_gap_p99_ms"] == pytest.approx(np.percentile(st_gap, 99))
    assert row["long_ttft_p50_ms"] == pytest.approx(np.median([(r.first_token_ns - r.sent_ns) / MS for r in long_]))
    # what the server saw against what was aimed for
    assert row["prompt_seen"] == pytest.approx(sum(r.prompt_tokens for r in recs) / sum(r.target_prompt_tokens for r in recs))


# ------------------------------------------------------------------------------ lag


def test_a_trial_is_lagged_when_its_p99_send_lag_exceeds_the_runs_bound(tmp_path):
    on_time = open_trial(4.0, 20, seed=1, service_ms=300, lag_ms=2)
    late = open_trial(4.0, 20, seed=1, service_ms=300, lag_ms=2, late={3, 9})  # 2 in 20 sent 80 ms late
    write(tmp_path, on_time, runtime="a", rate=4.0, max_lag_ms=10)
    write(tmp_path, late, runtime="b", rate=4.0, max_lag_ms=10)
    write(tmp_path, late, runtime="c", rate=4.0, max_lag_ms=100)  # the run allowed 100 ms
    write(tmp_path, late, runtime="d", rate=4.0, max_lag_ms=None)  # no bound recorded: LAG_MS
    tr, est = frames(tmp_path)
    lag = {r["runtime"]: (r["lag_p99_ms"], r["lagged"]) for r in tr.iter_rows(named=True)}
    assert lag["a"][0] == pytest.approx(2.0) and lag["a"][1] is False
    assert lag["b"][0] > 10 and lag["b"][1] is True
    assert lag["c"][0] == pytest.approx(lag["b"][0]) and lag["c"][1] is False
    assert run_record.LAG_MS < lag["d"][0] and lag["d"][1] is True
    assert by(est, runtime="b")["lagged"] is True and by(est, runtime="a")["lagged"] is False


# ------------------------------------------------------------------------------ switch claims


def _pair(raw, ttft_on, ttft_off, on="llama-on", off="llama-off", kind="shared-prefix", workload="shared"):
    """Two llama.cpp runtimes of one kind, `off` with its prefix cache off, 3 trials each at 4
    users; ttft_*: per trial, the TTFT of every request."""
    for runtime, ttfts, flags in ((on, ttft_on, LLAMA_FLAGS),
                                  (off, ttft_off, {**LLAMA_FLAGS, "prefix_cache": False})):
        for t, ttft in enumerate(ttfts, start=1):
            recs = []
            for k in range(8):
                s = T0 + (k // 4) * 1500 * MS
                recs.append(answer(k, s, s, s, ttft * (1 + 0.01 * k), 16, 20, tag="shared", prompt=300))
            write(raw, recs, runtime=runtime, trial=t, concurrency=4, kind=kind, workload=workload, flags=flags)


def test_a_switch_pair_gets_a_directional_claim_when_the_trials_clearly_differ(tmp_path):
    _pair(tmp_path, ttft_on=[100, 110, 105], ttft_off=[400, 420, 390])
    tr, est = frames(tmp_path)
    rows = workloads.claims(tr, est)
    assert set(rows["kind"]) == {"switch"}
    ttft = by(rows, metric="ttft_p50_ms")
    # the runtime's defaults (fewer flags set) are side a, though its name sorts second
    assert ttft["a"] == "llama-on" and ttft["b"] == "llama-off"
    assert ttft["verdict"] == "A better" and ttft["ratio_hi"] < 1 and ttft["trials_a"] == ttft["trials_b"] == 3
    assert "(prefix cache off)" in ttft["text"] and "**llama-on** is better, 7" in ttft["text"]
    assert ttft["users"] == 4 and ttft["workload"] == "shared"
    # answers that start sooner finish sooner: more tokens per second over the trial too
    agg = by(rows, metric="aggregate_tok_s")
    assert agg["verdict"] == "A better" and agg["ratio_lo"] > 1


def test_a_switch_pair_whose_trials_overlap_is_undecided(tmp_path):
    _pair(tmp_path, ttft_on=[200, 260, 230], ttft_off=[240, 210, 250])
    rows = workloads.claims(*frames(tmp_path))
    ttft = by(rows, metric="ttft_p50_ms")
    assert ttft["verdict"] == "undecided" and ttft["ratio_lo"] < 1 < ttft["ratio_hi"]
    assert "undecided" in ttft["text"] and "is better" not in ttft["text"]


def test_long_prompt_mix_pairs_are_compared_on_short_requests(tmp_path):
    flags_b = {**LLAMA_FLAGS, "extra_args": ["-b", "256"]}
    for runtime, flags, stall in (("llamacpp", LLAMA_FLAGS, 900), ("llamacpp-b256", flags_b, 150)):
        for t in (1, 2, 3):
            recs = []
            for k in range(8):
                s = T0 + k * 300 * MS
                long_ = k % 4 == 0
                recs.append(answer(k, s, s, s, (1500 if long_ else 80) * (1 + 0.03 * t), 6, 15,
                                   tag="long" if long_ else "short", gap_ms=stall * (1 + 0.03 * t)))
            write(tmp_path, recs, runtime=runtime, trial=t, concurrency=4, kind="long-prompt-mix", workload="mix",
                  flags=flags)
    rows = workloads.claims(*frames(tmp_path))
    assert sorted(rows["metric"]) == sorted(workloads.COMPARED["long-prompt-mix"])
    gap = by(rows, metric="short_gap_p99_ms")
    # the chunked side stalls short requests less: b is better on a lower-is-better figure
    assert gap["a"] == "llamacpp" and gap["verdict"] == "B better" and gap["ratio_lo"] > 1
    # the sentence names the better side, b, and how much lower its figure is: 1/6 of a's
    assert "extra args" in gap["text"] and "**llamacpp-b256** is better, 83% [82–84%] lower than llamacpp" in gap["text"]


# ------------------------------------------------------------------------------ studies


def test_in_study_keeps_fixed_closed_loop_cells_and_old_rows_on_the_matrix():
    frame = pl.DataFrame({"rate": [None, None, 2.0, None, None, 0.5],
                          "workload_kind": ["fixed", None, "fixed", "shared-prefix", "long-prompt-mix", "distribution"],
                          "row": [0, 1, 2, 3, 4, 5]}, schema_overrides={"rate": pl.Float64})
    assert metrics.in_study(frame, "matrix")["row"].to_list() == [0, 1]
    assert metrics.in_study(frame, "workloads")["row"].to_list() == [2, 3, 4, 5]
    assert metrics.in_study(frame, None)["row"].to_list() == list(range(6))


def test_measured_requests_split_the_studies_from_stored_runs(tmp_path):
    recs = open_trial(2.0, 4, seed=1, service_ms=200)
    write(tmp_path, recs, runtime="users", concurrency=2, kind="fixed", workload="p16")
    write(tmp_path, recs, runtime="rate", rate=2.0, kind="fixed", workload="p16")
    write(tmp_path, recs, runtime="prefix", concurrency=2, kind="shared-prefix", workload="shared")
    run = write(tmp_path, recs, runtime="old", concurrency=2, kind="fixed", workload="p16")
    # files of schema 6 have no rate or workload_kind: they read as null
    for name in ("run", "requests"):
        path = next(tmp_path.glob(f"**/{run}.{name}.parquet"))
        old = pl.read_parquet(path)
        old.drop([c for c in old.columns if c in store.ADDED[7]]).write_parquet(path)
    assert store.read_table(tmp_path, "run").filter(pl.col("runtime") == "old")["workload_kind"].to_list() == [None]
    matrix = speed.measured_requests(tmp_path, study="matrix")
    work = speed.measured_requests(tmp_path, study="workloads")
    assert sorted(set(matrix["runtime"])) == ["old", "users"] and sorted(set(work["runtime"])) == ["prefix", "rate"]
    assert matrix.height == work.height == 2 * 4  # measured rows only
    assert speed.measured_requests(tmp_path, study=None).height == 4 * 4
    assert workloads.run_settings(tmp_path)["slo"][0].to_list() == SLO
