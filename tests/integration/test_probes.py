"""The capability probes against real llama.cpp servers, and against Ollama's documented
responses (tests/fixtures/ollama) served by the replay server. vLLM's are in test_vllm.py."""

import polars as pl
import pytest
import yaml
from conftest import SMOLLM2
from ollama_replay import OllamaReplay

from gaplab.capability import judges, probes
from gaplab.report import capability as page
from gaplab.storage import store


def verdicts(raw, runtime: str) -> dict[str, str]:
    cap = store.read_table(raw, "capability").filter(pl.col("runtime") == runtime)
    return dict(zip(cap["capability"], cap["verdict"]))


@pytest.fixture(scope="module")
def llama(llama_ready, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capability")
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump({
        "name": "probe", "models": [SMOLLM2],
        "runtimes": [{"name": "four-slots", "kind": "llamacpp", "parallel": 4, "threads": 1, "ctx_size": 4096},
                     {"name": "one-slot", "kind": "llamacpp", "parallel": 1, "threads": 1, "ctx_size": 2048}],
        "workloads": [{"name": "p8-o8", "prompt_tokens": 8, "output_tokens": 8}], "load": {"concurrency": [1]}}))
    found, skipped = probes.measure(path, tmp / "raw")
    return path, tmp / "raw", found, skipped


def test_llama_cpp_as_launched(llama):
    _, raw, found, skipped = llama
    assert skipped == 0 and [server for server, _ in found] == ["four-slots/smollm2-135m/Q4_1",
                                                                 "one-slot/smollm2-135m/Q4_1"]
    four, one = verdicts(raw, "four-slots"), verdicts(raw, "one-slot")
    for v in (four, one):
        assert v["streamed usage"] == v["forced output length"] == v["logprobs"] == judges.PASS
        assert v["JSON-schema output"] == v["prefix cache reuse"] == judges.PASS
        assert v["several models or adapters"] == judges.NOT_OFFERED
        # SmolLM2's chat template has no tools: llama.cpp answers in text although a call was required
        assert v["tool calls"] == judges.FAIL
    assert four["concurrent streams"] == judges.PASS and one["concurrent streams"] == judges.FAIL


def test_evidence_is_the_servers_own(llama):
    _, raw, _, _ = llama
    cap = store.read_table(raw, "capability").filter(pl.col("runtime") == "one-slot")
    row = {r["capability"]: r for r in cap.iter_rows(named=True)}
    assert row["concurrent streams"]["value"] == 1  # one slot: the four streams took turns
    assert "prompt tokens from cache" in row["prefix cache reuse"]["evidence"]  # llama.cpp's timings.cache_n
    assert row["prefix cache reuse"]["value"] < 0.5
    assert "does not support tools" in row["tool calls"]["evidence"]
    assert row["forced output length"]["value"] == judges.FORCED_TOKENS
    assert set(cap["cell_id"]) == {"one-slot/smollm2-135m/Q4_1/capabilities"} and (cap["workload"] == "capability-probe").all()


def test_a_second_run_skips_what_is_probed_and_force_probes_again(llama):
    path, raw, _, _ = llama
    found, skipped = probes.measure(path, raw, runtimes=["one-slot"])
    assert found == [] and skipped == 1
    found, skipped = probes.measure(path, raw, force=True, runtimes=["one-slot"])
    assert len(found) == 1 and store.read_table(raw, "capability")["run_id"].n_unique() == 3
    side = page.measured(raw, store.read_table(raw, "capability")["machine_id"][0])
    assert side.height == 2 * 8  # the newest run of each server only


def test_an_unknown_runtime_is_refused_in_one_line(llama):
    path, raw, _, _ = llama
    with pytest.raises(ValueError, match="--runtime: 'vllm' is not a runtime of probe"):
        probes.measure(path, raw, runtimes=["vllm"])


def test_ollama_through_its_documented_responses(tmp_path):
    path = tmp_path / "ollama.yaml"
    with OllamaReplay(parallel=1) as replay:  # OLLAMA_NUM_PARALLEL=1
        path.write_text(yaml.safe_dump({
            "name": "gpu", "runtimes": [{"name": "ollama", "kind": "ollama", "base_url": replay.url,
                                         "served_names": {"qwen3-8b": "qwen3:8b"}}],
            "models": [{"name": "qwen3-8b", "api": "chat", "quants": ["Q4_K_M"]}],
            "workloads": [{"name": "p8-o8", "prompt_tokens": 8, "output_tokens": 8}], "load": {"concurrency": [1]}}))
        probes.measure(path, tmp_path / "raw")
        asked = replay.openai_bodies
    v = verdicts(tmp_path / "raw", "ollama")
    assert v == {"streamed usage": judges.PASS, "forced output length": judges.NOT_OFFERED,
                 "concurrent streams": judges.FAIL, "tool calls": judges.PASS,
                 "JSON-schema output": judges.PASS, "logprobs": judges.PASS,
                 "prefix cache reuse": judges.PASS, "several models or adapters": judges.NOT_OFFERED}
    # what the probes sent is what Ollama's OpenAI compatibility document lists
    usage = next(b for b in asked if b.get("stream"))  # the usage probe streams on the OpenAI-compatible API
    assert usage["stream_options"] == {"include_usage": True}
    tool = next(b for b in asked if "tools" in b)
    assert tool["tool_choice"] == "required" and tool["tools"][0]["function"]["name"] == "get_weather"
    assert next(b for b in asked if "response_format" in b)["response_format"]["type"] == "json_schema"
    cap = store.read_table(tmp_path / "raw", "capability")
    evidence = dict(zip(cap["capability"], cap["evidence"]))
    assert "811 of 812 prompt tokens from cache" in evidence["prefix cache reuse"]
    assert "no option that ignores the end of text" in evidence["forced output length"]
