"""The Ollama adapter against responses written from Ollama's documented API
(tests/fixtures/ollama), served over real HTTP by tests/support/ollama_replay.py."""

import json

import polars as pl
import pytest
import yaml

from gaplab import quality, store
from gaplab.report import quality as qframes
from gaplab.report import speed_prose
from gaplab.runtimes import ollama
from gaplab.measure import run_cell
from ollama_replay import FIXTURES, OllamaReplay


@pytest.fixture()
def replay():
    with OllamaReplay() as server:
        yield server


def scenario(tmp_path, url, served="qwen3:8b"):
    path = tmp_path / "ollama.yaml"
    path.write_text(yaml.safe_dump({
        "name": "gpu", "runtimes": [{"name": "ollama", "kind": "ollama", "base_url": url,
                                     "served_names": {"qwen3-8b": served}}],
        "models": [{"name": "qwen3-8b", "served_name": "Qwen/Qwen3-8B", "api": "chat", "quants": ["Q4_K_M"]}],
        "workloads": [{"name": "p32-o8", "prompt_tokens": 32, "output_tokens": 8}],
        "load": {"concurrency": [1], "requests": 3, "min_seconds": 0, "warmup": 1, "max_seconds": 30}}))
    return path


def test_native_stream_counts_durations_and_model_load(tmp_path, replay):
    res = run_cell(scenario(tmp_path, replay.url), raw_dir=tmp_path / "raw", progress=False)
    assert res["status"] == "complete" and res["errors"] == 0
    req = store.read_table(tmp_path / "raw", "requests").sort("request_index")
    final = json.loads((FIXTURES / "chat.ndjson").read_text().splitlines()[-1])
    assert req["completion_tokens"].to_list() == [final["eval_count"]] * 4
    assert req["server_predicted_ms"].to_list() == [final["eval_duration"] / 1e6] * 4
    assert req["server_prompt_n"].to_list() == [final["prompt_eval_count"]] * 4
    # the first request (the warmup) paid for loading the model
    assert req["server_load_ms"].to_list() == [2841.0, 11.25, 11.25, 11.25]
    assert req["warmup"].to_list() == [True, False, False, False]
    # the first line carries no text: the first token is the second line
    chunks = store.read_table(tmp_path / "raw", "chunks").filter(pl.col("request_index") == 1).sort("chunk_index")
    assert chunks["kind"].to_list()[:2] == ["empty", "content"]
    assert req["finish_reason"].unique().to_list() == ["length"]
    run = store.read_table(tmp_path / "raw", "run")
    assert run["runtime_version"][0] == "Ollama 0.12.6"


def test_partial_offload_is_detected_and_said_in_plain_words(tmp_path, replay):
    run_cell(scenario(tmp_path, replay.url), raw_dir=tmp_path / "raw", progress=False)
    meta = json.loads(store.read_table(tmp_path / "raw", "run")["meta_json"][0])
    assert meta["ollama_placement"]["before"] is None  # loaded by the first request
    after = meta["ollama_placement"]["after"]
    assert after["split"] and after["gpu_fraction"] == pytest.approx(6477163520 / 9813884928, abs=1e-4)
    run = store.read_table(tmp_path / "raw", "run")  # the same facts as typed columns (schema 4)
    assert (run["model_bytes_loaded"][0], run["model_bytes_gpu"][0]) == (9813884928, 6477163520)
    text = speed_prose.placement_story(tmp_path / "raw")
    assert "qwen3-8b Q4_K_M on ollama" in text and "66% of 9.1 GiB in GPU memory" in text


def test_model_the_server_lacks_is_one_clear_error(tmp_path, replay):
    with pytest.raises(RuntimeError, match=r"models.qwen3-8b: Ollama at .* has \['qwen3:8b'\], not 'llama3:70b'"):
        run_cell(scenario(tmp_path, replay.url, served="llama3:70b"), raw_dir=tmp_path / "raw", progress=False)


def test_placement_words():
    full = {"split": False, "cpu_only": False, "gpu_fraction": 1.0, "size": 2**30}
    assert ollama.describe(full) == "entirely in GPU memory"
    assert ollama.describe({**full, "cpu_only": True, "gpu_fraction": 0.0}) == "entirely on the CPU"
    assert ollama.describe(None) == "not loaded"


def test_task_accuracy_reaches_ollama_through_its_openai_endpoint(tmp_path, replay):
    """Quality asks through the openai SDK: to Ollama's /v1 root, not its native one."""
    eval_set = tmp_path / "mine.jsonl"
    eval_set.write_text("".join(json.dumps(i) + "\n" for i in quality.make_eval_set(3, 6)))
    res = quality.measure(scenario(tmp_path, replay.url), raw_dir=tmp_path / "raw", eval_path=eval_set,
                          progress=False)
    assert res.failed == [] and res.task_runs == 1
    task = qframes.task_frame(qframes.read_quality(tmp_path / "raw")[0])
    assert task["runtime"].to_list() == ["ollama"] and task["questions"].to_list() == [6]
    # every item was asked, by its served name, greedily, each answer ending at its line
    asked = [b for b in replay.openai_bodies if b["max_tokens"] == quality.MAX_TOKENS]  # not the continuations
    assert len(asked) == 6 and {b["model"] for b in asked} == {"qwen3:8b"}
    assert {b["temperature"] for b in asked} == {0} and all(b["stop"] == ["\n"] for b in asked)
    # the fixture answers "12": right exactly where the question's answer is 12
    answers = qframes.read_quality(tmp_path / "raw")[1].filter(pl.col("workload") == "task:mine")
    assert answers["completion"].to_list() == ["12"] * 6
    assert answers["correct"].to_list() == [a == "12" for a in answers["expected"].to_list()]
