import polars as pl
import pytest

from gaplab import analysis, store
from gaplab.client import RequestRecord

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


@pytest.fixture()
def summary(tmp_path):
    ident = {"run_id": "20260101T000000Z-aaaaaa", "cell_id": "c", "cell_key": "k", "scenario": "s",
             "hardware_id": "hw", "runtime": "rt", "runtime_kind": "llamacpp", "runtime_version": "v",
             "model": "m", "quant": "Q8_0", "workload": "w", "concurrency": 2, "threads": 1, "parallel": 8}
    store.write_run(tmp_path, ident, {"status": "complete"}, HAND)
    return analysis.cell_summary(analysis.measured_requests(tmp_path, "hw")).row(0, named=True)


def test_hand_computed_cell(summary):
    assert summary["requests"] == 5 and summary["errors"] == 1
    assert summary["ttft_p50_ms"] == pytest.approx(250.0)  # of 100, 200, 300, 400
    assert summary["ttft_p99_ms"] == pytest.approx(397.0)  # 300 + 0.97 * 100
    assert summary["output_tokens"] == 33
    assert summary["span_s"] == pytest.approx(2.41)  # first send 0 ms, last end 2410 ms
    assert summary["aggregate_tok_s"] == pytest.approx(33 / 2.41)
    assert summary["per_user_tok_s"] == pytest.approx(10.0)
    assert summary["itl_mean_ms"] == pytest.approx(100.0)  # from the three one-token-per-chunk requests
    assert summary["e2e_p50_ms"] == pytest.approx(1005.0)  # of 700, 900, 1110, 1300


def test_latest_complete_run_replaces_older_ones():
    runs = pl.DataFrame({"run_id": ["a", "b", "c"], "hardware_id": ["h"] * 3, "cell_key": ["k"] * 3,
                         "status": ["complete", "complete", "interrupted"]})
    assert analysis.latest_complete_runs(runs)["run_id"].to_list() == ["b"]


def _sum(rows):
    return pl.DataFrame(rows, schema=["runtime", "quant", "model", "concurrency", "aggregate_tok_s"], orient="row")


def test_crossover_and_ratio():
    s = _sum([("batch", "Q4", "m", 1, 40.0), ("batch", "Q4", "m", 2, 55.0), ("batch", "Q4", "m", 8, 120.0),
              ("single", "Q4", "m", 1, 50.0), ("single", "Q4", "m", 2, 50.0), ("single", "Q4", "m", 8, 50.0)])
    assert analysis.crossover(s, "aggregate_tok_s", {"runtime": "batch"}, {"runtime": "single"}) == 2
    assert analysis.crossover(s, "aggregate_tok_s", {"runtime": "single"}, {"runtime": "batch"}) is None
    assert analysis.ratio_at(s, "aggregate_tok_s", {"runtime": "batch"}, {"runtime": "single"}, 8) == pytest.approx(2.4)
    assert analysis.ratio_at(s, "aggregate_tok_s", {"runtime": "batch"}, {"runtime": "nope"}, 8) is None


def test_throughput_story_states_ratio_and_flip():
    s = _sum([("batch", "Q4", "m", 1, 40.0), ("batch", "Q4", "m", 8, 120.0),
              ("single", "Q4", "m", 1, 50.0), ("single", "Q4", "m", 8, 50.0)])
    text = analysis.throughput_story(s)
    assert "batch delivers 120.0 output tok/s, 2.40× single" in text
    assert "batch ×3.00, single ×1.00" in text
    assert "ranking flips: with 1 user single is ahead" in text
