"""Prefix-cache hit rates by the server's own count, on the committed workloads runs (immutable
files in data/raw): vLLM's counters, llama.cpp's per-request counts of prompt tokens computed."""

import polars as pl
import pytest

from gaplab.report import speed, workloads, workloads_prose
from gaplab.spec.config import RAW_DIR
from gaplab.storage.backend import location

MACHINE = "m-fdf585a8"  # the machine the committed workloads study ran on


@pytest.fixture(scope="module")
def shared_prefix():
    raw = location(RAW_DIR)
    trials = workloads.trials(speed.measured_requests(raw, MACHINE, study="workloads"), workloads.run_settings(raw))
    trials = workloads.with_prefix_hits(raw, trials.filter(pl.col("workload_kind") == "shared-prefix"))
    return {rt: g for (rt,), g in trials.group_by("runtime")}


def test_each_servers_own_count_of_cached_prompt_tokens(shared_prefix):
    llama = shared_prefix["llamacpp"]  # per request: prompt_n of the prompt tokens it saw
    assert llama["prefix_hit_pct"].to_list() == pytest.approx(((1 - llama["prompt_computed"]) * 100).to_list())
    assert 30 < llama["prefix_hit_pct"].mean() < 90
    assert shared_prefix["llamacpp-nocache"]["prefix_hit_pct"].to_list() == [0.0] * 3  # cache_prompt: false
    vllm = shared_prefix["vllm-cpu"]  # from its prefix_cache counters: vLLM gives no per-request count
    assert vllm["prompt_computed"].is_null().all() and (vllm["prefix_hit_pct"] > 80).all()
    assert shared_prefix["vllm-cpu-nocache"]["prefix_hit_pct"].is_null().all()  # nothing queried: no share, not 0/0


def test_the_page_table_puts_the_hit_rate_beside_the_clients_ttft(shared_prefix):
    est = workloads.estimates(pl.concat(list(shared_prefix.values()), how="diagonal_relaxed"))
    table = workloads_prose.prefix_hits(est)
    assert table.columns == ["runtime", "workload", "concurrency", "trials", "prefix_hit_pct", "ttft_p50_ms"]
    assert table.height == 4 and "[" in table.filter(pl.col("runtime") == "vllm-cpu")["prefix_hit_pct"].item()
