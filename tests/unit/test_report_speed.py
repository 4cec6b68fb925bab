import polars as pl
import pytest

from gaplab.analysis import metrics
from gaplab.measure.records import RequestRecord
from gaplab.report import speed, speed_prose
from gaplab.storage import store

MS = 1_000_000


def rec(i, sent, first, last, end, tokens, chunks, warmup=False, error=None):
    r = RequestRecord(index=i, user=i % 2, warmup=warmup, scheduled_ns=sent * MS, sent_ns=sent * MS,
                      end_ns=end * MS, error=error)
    if error is None:
        r.first_token_ns, r.last_token_ns, r.completion_tokens = first * MS, last * MS, tokens
        step = (last - first) / max(chunks - 1, 1)
        r.chunks = [(int((first + k * step) * MS), "content", 1) for k in range(chunks)]
    return r


HAND = [
    rec(0, 0, 100, 1100, 1110, 11, 11),
    rec(1, 0, 200, 700, 700, 6, 6),
    rec(2, 1110, 1410, 2410, 2410, 11, 5),  # five chunks for eleven tokens: no ITL
    rec(3, 700, 1100, 1500, 1600, 5, 5),
    rec(4, 1600, 0, 0, 1700, 0, 0, error="HTTP 500: boom"),
    rec(5, -5000, -4900, -4000, -3990, 11, 11, warmup=True),  # warmup: left out of every figure
]


def ident(run_id="20260101T000000Z-aaaaaa", **kw):
    base = {"run_id": run_id, "cell_id": "c", "cell_key": "k", "scenario": "s", "hardware_id": "hw",
            "machine_id": "m-1", "series_id": "s1", "trial": 1, "runtime": "rt", "runtime_kind": "llamacpp",
            "runtime_version": "v", "model": "m", "quant": "Q8_0", "workload": "w", "concurrency": 2,
            "threads": 1, "parallel": 8}
    return {**base, **kw}


@pytest.fixture()
def summary(tmp_path):
    store.write_run(tmp_path, ident(), {"status": "complete"}, HAND)
    return metrics.trial_summary(speed.measured_requests(tmp_path, "m-1")).row(0, named=True)


def test_hand_computed_trial(summary):
    assert summary["requests"] == 5 and summary["errors"] == 1
    assert summary["ttft_p50_ms"] == pytest.approx(250.0)  # of 100, 200, 300, 400
    assert summary["ttft_p99_ms"] == pytest.approx(397.0)  # 300 + 0.97 * 100
    assert summary["output_tokens"] == 33  # the failed request's tokens never count
    assert summary["span_s"] == pytest.approx(2.41)  # first send 0 ms, last end 2410 ms
    assert summary["aggregate_tok_s"] == pytest.approx(33 / 2.41)
    assert summary["per_user_tok_s"] == pytest.approx(10.0)
    assert summary["itl_mean_ms"] == pytest.approx(100.0)  # from the three one-token-per-chunk requests
    assert summary["e2e_p50_ms"] == pytest.approx(1005.0)  # of 700, 900, 1110, 1300


def _trial(tmp_path, trial, tokens_per_s, series="s1", status="complete", run_id=None):
    """A trial of 2 requests over 1 s whose aggregate tok/s is tokens_per_s."""
    n = int(tokens_per_s)
    recs = [rec(0, 0, 100, 900, 1000, n // 2, n // 2), rec(1, 0, 100, 900, 1000, n - n // 2, n - n // 2)]
    run_id = run_id or f"20260101T00000{trial}Z-{series}{trial}"
    store.write_run(tmp_path, ident(run_id, series_id=series, trial=trial), {"status": status}, recs)


def test_estimate_is_the_mean_over_trials_with_a_t_interval(tmp_path):
    for t, v in ((1, 10), (2, 12), (3, 14)):
        _trial(tmp_path, t, v)
    est = speed.cell_summary(speed.measured_requests(tmp_path), precision=0.05).row(0, named=True)
    import math
    import statistics
    # the runtime's only cell is its pool: t(0.975, 2 df) x sd of the logs x mean / sqrt(3 trials)
    half = 4.302653 * statistics.stdev(map(math.log, (10, 12, 14))) * 12 / 3 ** 0.5
    assert est["trials"] == 3 and est["aggregate_tok_s"] == pytest.approx(12)
    assert est["aggregate_tok_s_lo"] == pytest.approx(12 - half, rel=1e-4)
    assert est["aggregate_tok_s_hi"] == pytest.approx(12 + half, rel=1e-4)
    assert est["aggregate_tok_s_sd"] == pytest.approx(2)
    assert est["halfwidth_pct"] == pytest.approx(half / 12 * 100, rel=1e-4) and not est["precision_met"]


def test_only_the_newest_series_and_its_complete_trials_count(tmp_path):
    _trial(tmp_path, 1, 10, series="a")
    _trial(tmp_path, 1, 20, series="b")
    _trial(tmp_path, 2, 22, series="b")
    _trial(tmp_path, 3, 99, series="b", status="interrupted")
    est = speed.cell_summary(speed.measured_requests(tmp_path)).row(0, named=True)
    assert est["trials"] == 2 and est["aggregate_tok_s"] == pytest.approx(21)


def test_runs_of_schema_1_are_one_trial_without_an_interval(tmp_path):
    _trial(tmp_path, 1, 10)
    old = metrics.with_run_keys(pl.DataFrame({"run_id": ["r"], "hardware_id": ["hw"], "machine_id": [None],
                                               "series_id": [None], "trial": [None]},
                                              schema_overrides={"machine_id": pl.String, "series_id": pl.String,
                                                                "trial": pl.Int32}))
    assert old.row(0, named=True) == {"run_id": "r", "hardware_id": "hw", "machine_id": "hw", "series_id": "r",
                                      "trial": 1}
    est = speed.cell_summary(speed.measured_requests(tmp_path)).row(0, named=True)
    assert est["trials"] == 1 and est["aggregate_tok_s_lo"] is None and est["halfwidth_pct"] is None


def test_error_kinds_are_counted():
    assert metrics.error_kind("truncated after 3 tokens") == "truncated"
    assert metrics.error_kind("connection reset after 3 tokens") == "connection reset"
    assert metrics.error_kind("HTTP 503: busy") == "HTTP 503"
    assert metrics.error_kind("no complete response within 1 s") == "timeout"


def test_the_committed_runs_of_schema_1_still_render_as_one_trial_each():
    """data/raw keeps runs measured before trials existed; the page's frames, claims and prose
    must still come out of them, saying there is no interval."""
    from pathlib import Path

    from gaplab.report import claims

    raw = Path(__file__).resolve().parents[2] / "data" / "raw"
    runs = store.read_table(raw, "run").filter(pl.col("schema_version") == 1)
    assert runs.height, "no schema-1 runs are committed"
    old = runs["hardware_id"][0]  # their machine is known by its class only
    trials = metrics.trial_summary(speed.measured_requests(raw, old))
    est = speed.estimates(trials, 0.05)
    assert est.height >= 10 and set(est["trials"]) == {1} and est["aggregate_tok_s_lo"].null_count() == est.height
    rows = claims.claims_table(trials)
    assert set(rows["verdict"]) == {"no interval"}
    text = speed_prose.throughput_story(rows, est) + speed_prose.precision_story(est, 0.05)
    assert "1 trial" in text and "no verdict" in text
    assert "1 trial, no interval" in speed_prose.setup_story(speed.runs(raw), old, est)


def test_background_story_flags_trials_beside_other_work():
    from gaplab.report.speed_prose import background_story

    quiet = background_story([0.01, 0.02, 0.03])
    assert "otherwise quiet" in quiet and "median 0.02" in quiet
    busy = background_story([0.01, 0.02, 0.9])
    assert "1 trial(s)" in busy and "FORCE=1" in busy and "quiet." not in busy
    assert background_story([]) == ""


def test_the_equivalence_margin_is_the_newest_runs_scenarios(tmp_path):
    from gaplab.analysis import stats
    _trial(tmp_path, 1, 10)  # stored before the setting existed
    assert speed.equivalence_margin(tmp_path, "m-1") == stats.MARGIN
    recs = [rec(0, 0, 100, 900, 1000, 5, 5)]
    store.write_run(tmp_path, ident("20260101T000009Z-s19", series_id="s1", trial=2),
                    {"status": "complete", "load": {"equivalence_margin": 0.1}}, recs)
    assert speed.equivalence_margin(tmp_path, "m-1") == 0.1
