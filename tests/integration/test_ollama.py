"""What the CPU build of Ollama cannot show: a model split between GPU and CPU memory.

These run against responses written from Ollama's documented API (tests/fixtures/ollama),
served over real HTTP by tests/support/ollama_replay.py: a model too big for its GPU, which
/api/ps reports as partly in GPU memory. Everything a CPU build can show (streams, per-request
timings, placement on the CPU, cold start, imports, stopping) runs against a real Ollama in
test_ollama_server.py."""

import json

import pytest
import yaml
from ollama_replay import OllamaReplay

from gaplab.measure.trial import TrialPlan, run_trial
from gaplab.report import speed, speed_prose
from gaplab.runtimes import ollama
from gaplab.storage import store


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


def test_partial_offload_is_detected_and_said_in_plain_words(tmp_path, replay):
    run_trial(TrialPlan(scenario=scenario(tmp_path, replay.url), data_dir=str(tmp_path / "raw")), progress=False)
    meta = json.loads(store.read_table(tmp_path / "raw", "run")["meta_json"][0])
    assert meta["ollama_placement"]["before"] is None  # loaded by the first request
    after = meta["ollama_placement"]["after"]
    assert after["split"] and after["gpu_fraction"] == pytest.approx(6477163520 / 9813884928, abs=1e-4)
    run = store.read_table(tmp_path / "raw", "run")  # the same facts as typed columns (schema 4)
    assert (run["model_bytes_loaded"][0], run["model_bytes_gpu"][0]) == (9813884928, 6477163520)
    text = speed_prose.placement_story(speed.runs(tmp_path / "raw"))
    assert "qwen3-8b Q4_K_M on ollama" in text and "66% of 9.1 GiB in GPU memory" in text


def test_placement_words():
    full = {"split": False, "cpu_only": False, "gpu_fraction": 1.0, "size": 2**30}
    assert ollama.describe(full) == "entirely in GPU memory"
    assert ollama.describe({**full, "cpu_only": True, "gpu_fraction": 0.0}) == "entirely on the CPU"
    assert ollama.describe(None) == "not loaded"
