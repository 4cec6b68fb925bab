"""Which engine answers at a URL, from the answers each engine's server writes, served over real
HTTP by a local server (tests/support/static_server.py): SGLang, TGI and vLLM on a GPU cannot
run here. The real llama-server and Ollama are identified in tests/integration/test_attach.py.

Where each answer's shape comes from:
- vLLM 0.32: vllm/entrypoints/serve/instrumentator/basic.py (GET /version), serve/engine/protocol.py
  (ModelCard: owned_by "vllm", root), v1/metrics names (vllm:...)
- SGLang: python/sglang/srt/entrypoints/http_server.py (GET /get_server_info: server args, scheduler
  info, "version"; GET /get_model_info: model_path), srt/metrics/collector.py (sglang:...)
- TGI: router/src/lib.rs (struct Info, GET /info)
- llama.cpp: recorded from the cached llama-server (`llama-server -m smollm2-135m-Q4_1.gguf -np 2
  --metrics`, then `curl /props` and `curl /v1/models`), trimmed to the fields read here
"""

import json
import struct

import pytest
from static_server import serving

from gaplab.machine.modelfile import Traffic
from gaplab.runtimes.identify import Engine, attached_traffic, identify, served_traffic
from gaplab.spec.scenario import ModelSpec, RuntimeSpec

VLLM_METRICS = ("# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                "# TYPE vllm:num_requests_running gauge\n"
                'vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B-FP8"} 0.0\n')


def vllm_routes(root="Qwen/Qwen3-8B-FP8", metrics=VLLM_METRICS):
    return {"/version": {"version": "0.11.0"}, "/metrics": metrics,
            "/v1/models": {"object": "list", "data": [{"id": "Qwen/Qwen3-8B-FP8", "object": "model", "created": 1,
                                                        "owned_by": "vllm", "root": root, "parent": None,
                                                        "max_model_len": 32768, "permission": []}]}}


SGLANG = {"/get_server_info": {"model_path": "Qwen/Qwen3-8B", "tokenizer_path": "Qwen/Qwen3-8B", "tp_size": 1,
                               "max_total_num_tokens": 161721, "internal_states": [{}], "version": "0.5.4"},
          "/get_model_info": {"model_path": "Qwen/Qwen3-8B", "is_generation": True},
          "/metrics": "sglang:num_running_reqs{model_name=\"Qwen/Qwen3-8B\"} 0.0\n"}
TGI = {"/info": {"model_id": "Qwen/Qwen3-8B", "model_sha": None, "model_dtype": "torch.float16",
                 "model_device_type": "cuda", "max_concurrent_requests": 128, "max_input_tokens": 1024,
                 "max_total_tokens": 2048, "validation_workers": 2, "version": "3.3.6", "sha": "abc",
                 "docker_label": None}}
LLAMACPP = {"/props": {"default_generation_settings": {"n_ctx": 512}, "total_slots": 2, "model_alias": "smol",
                       "model_path": "/elsewhere/smollm2-135m-Q4_1.gguf", "endpoint_slots": True,
                       "build_info": "b6123-abc1234"},
            "/v1/models": {"object": "list", "data": [{"id": "smol", "object": "model", "owned_by": "llamacpp",
                                                        "meta": {"n_params": 134515008, "size": 96576768}}]}}


@pytest.mark.parametrize("routes, name, version, label", [
    (vllm_routes(), "vllm", "0.11.0", "vLLM 0.11.0"),
    (SGLANG, "sglang", "0.5.4", "SGLang 0.5.4"),
    (TGI, "tgi", "3.3.6", "TGI 3.3.6"),
    (LLAMACPP, "llamacpp", "b6123-abc1234", "llama.cpp b6123-abc1234"),
    ({"/api/version": {"version": "0.12.3"}}, "ollama", "0.12.3", "Ollama 0.12.3"),
    # vLLM behind a proxy that hides /version: its metric names still say which engine
    ({"/metrics": VLLM_METRICS}, "vllm", "", "vLLM (version not reported)"),
    # /version alone is too plain to be vLLM's: another server answers it too
    ({"/version": {"version": "1.0"}, "/v1/models": {"data": [{"id": "x", "owned_by": "acme"}]}}, None, "",
     "an unidentified server"),
])
def test_each_engine_is_named_by_its_own_answers(routes, name, version, label):
    with serving(routes) as root:
        for url in (root, root + "/v1"):  # the root and the OpenAI base alike
            engine = identify(url)
            assert (engine.name, engine.version, engine.label) == (name, version, label)


def test_llamacpp_says_its_weights_size_and_the_file_it_serves():
    with serving(LLAMACPP) as root:
        engine = identify(root)
        # the GGUF is on another machine: the size from /v1/models, K and V unknown
        assert served_traffic(engine, root, "smol") == Traffic(96576768, None)


def _hf_folder(folder, dtype="bfloat16"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"dtype": dtype, "num_attention_heads": 8,
                                                    "num_key_value_heads": 2, "hidden_size": 512,
                                                    "num_hidden_layers": 4}))
    header = json.dumps({"w": {"dtype": "BF16", "shape": [300], "data_offsets": [0, 600]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 600)
    return folder


def test_vllm_names_the_folder_it_loaded_and_it_is_read_when_it_is_here(tmp_path):
    folder = _hf_folder(tmp_path / "qwen")
    with serving(vllm_routes(root=str(folder))) as root:
        assert served_traffic(identify(root), root, "Qwen/Qwen3-8B-FP8") == Traffic(600, 4 * 2 * 64 * 2 * 2)
    with serving(vllm_routes()) as root:  # a hub id, not a folder here: the server does not say
        assert served_traffic(identify(root), root, "Qwen/Qwen3-8B-FP8") == Traffic(None, None)


def test_model_config_fills_what_the_server_does_not_say(tmp_path):
    folder = _hf_folder(tmp_path / "qwen")
    model = ModelSpec(name="qwen3-8b", quants=["FP8"])
    runtime = RuntimeSpec(name="v", kind="openai", base_url="http://x/v1",
                          model_config={"qwen3-8b": str(folder / "config.json")})
    with serving(vllm_routes()) as root:
        t = attached_traffic(runtime, model, identify(root), root, "Qwen/Qwen3-8B-FP8", None)
    assert t == Traffic(600, 4 * 2 * 64 * 2 * 2)
    with serving(LLAMACPP) as root:  # the server's weight bytes, K and V from the file named
        t = attached_traffic(runtime, model, identify(root), root, "smol", None)
    assert t == Traffic(96576768, 4 * 2 * 64 * 2 * 2)
    (tmp_path / "notes.txt").write_text("not a model")
    runtime = RuntimeSpec(name="v", kind="openai", base_url="http://x/v1", model_config={"qwen3-8b": str(tmp_path /
                                                                                                       "notes.txt")})
    with pytest.raises(RuntimeError, match=r"^runtimes.v.model_config.qwen3-8b: .*notes.txt is neither a GGUF file"):
        attached_traffic(runtime, model, Engine(None), "http://127.0.0.1:9", "x", None)
