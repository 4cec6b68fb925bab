"""Which engine answers at a URL, and what it says about the model it serves.

A server gaplab attaches to (kind openai, or ollama) is asked at each engine's own endpoints,
most particular first. The answers, as each engine's server code writes them:
- Ollama      GET /api/version      {"version": "0.12.3"}
- llama.cpp   GET /props            {"build_info": "b6123-abc1234", "model_path": ..., "total_slots": 4, ...}
- SGLang      GET /get_server_info  its server arguments and scheduler info, with "version"
- TGI         GET /info             {"model_id", "model_dtype", "version", "sha", "docker_label", ...}
- vLLM        GET /version          {"version": "0.11.0"}, taken for vLLM only beside another sign of
                                    it (/v1/models owned_by "vllm", or vllm: metrics): /version is
                                    too plain a path to name an engine alone
Where none of these answers, the metric names on /metrics still say which engine it is
(vllm:, sglang:, llamacpp:, tgi_), without its version.

The model's bytes, for the roofline, come from the same server where it says them: llama.cpp
lists the weights' size in /v1/models (meta.size) and the file it serves in /props; Ollama
gives the GGUF keys of the model in /api/show (model_info) and its size in /api/tags; vLLM
(/v1/models root) and SGLang (/get_model_info model_path) name the folder they loaded, read
when it is on this machine. Otherwise the scenario's model_config names a file to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gaplab.machine.modelfile import Traffic, config_traffic, gguf_kv_bytes, gguf_traffic, hf_traffic, traffic_or_none
from gaplab.measure.httpget import get_bytes, get_json, post_json

NAMES = {"llamacpp": "llama.cpp", "vllm": "vLLM", "sglang": "SGLang", "tgi": "TGI", "ollama": "Ollama"}
METRIC_PREFIXES = {"vllm:": "vllm", "sglang:": "sglang", "llamacpp:": "llamacpp", "tgi_": "tgi"}
TIMEOUT = 5  # seconds per probe: a server that is up answers in milliseconds


@dataclass(frozen=True)
class Engine:
    name: str | None  # a key of NAMES; None: nothing it answered names an engine
    version: str = ""  # as the server writes it; "" where it does not say
    source: str = ""  # the answer that named it, e.g. "GET /props build_info"
    facts: dict = field(default_factory=dict)  # that answer, for what else it says (model path, slots)

    @property
    def label(self) -> str:
        """How pages name it: "vLLM 0.11.0", "llama.cpp b6123-abc1234"."""
        if self.name is None:
            return "an unidentified server"
        return f"{NAMES[self.name]} {self.version}" if self.version else f"{NAMES[self.name]} (version not reported)"


def _version(answer) -> str:
    return str(answer.get("version") or "") if isinstance(answer, dict) else ""


def _owned_by(root: str, api_key: str | None) -> set[str]:
    listed = get_json(root + "/v1/models", api_key, TIMEOUT) or {}
    return {str(m.get("owned_by")) for m in listed.get("data", []) if isinstance(m, dict)}


def metric_engine(root: str, api_key: str | None = None) -> str | None:
    """The engine whose metric names /metrics carries, or None."""
    body = get_bytes(root + "/metrics", api_key, TIMEOUT)
    text = body.decode(errors="replace") if body else ""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return next((engine for prefix, engine in METRIC_PREFIXES.items() if any(n.startswith(prefix) for n in names)),
                None)


def identify(root: str, api_key: str | None = None) -> Engine:
    """The engine at root (the server's root URL, without /v1)."""
    root = root.rstrip("/").removesuffix("/v1")
    answer = get_json(root + "/api/version", api_key, TIMEOUT)
    if _version(answer):
        return Engine("ollama", _version(answer), "GET /api/version", answer)
    answer = get_json(root + "/props", api_key, TIMEOUT)
    if isinstance(answer, dict) and "build_info" in answer:
        return Engine("llamacpp", str(answer["build_info"]), "GET /props build_info", answer)
    answer = get_json(root + "/get_server_info", api_key, TIMEOUT)
    if _version(answer):
        return Engine("sglang", _version(answer), "GET /get_server_info", answer)
    answer = get_json(root + "/info", api_key, TIMEOUT)
    if _version(answer) and "model_id" in answer:
        return Engine("tgi", _version(answer), "GET /info", answer)
    by_metrics = metric_engine(root, api_key)
    answer = get_json(root + "/version", api_key, TIMEOUT)
    if _version(answer) and (by_metrics == "vllm" or "vllm" in _owned_by(root, api_key)):
        return Engine("vllm", _version(answer), "GET /version", answer)
    if by_metrics:
        return Engine(by_metrics, "", "metric names on /metrics")
    return Engine(None)


def _local(path) -> Path | None:
    return Path(path) if isinstance(path, str) and path and Path(path).exists() else None


def served_traffic(engine: Engine, root: str, served: str, api_key: str | None = None) -> Traffic:
    """What the server says of the model's bytes (weights, K and V per token); None where it does not."""
    root = root.rstrip("/").removesuffix("/v1")
    if engine.name == "llamacpp":
        listed = (get_json(root + "/v1/models", api_key, TIMEOUT) or {}).get("data", [])
        meta = next((m.get("meta") or {} for m in listed if m.get("id") == served), None)
        meta = meta if meta is not None else (listed[0].get("meta") or {}) if listed else {}
        path = _local(engine.facts.get("model_path"))
        file = traffic_or_none(gguf_traffic, path) if path else Traffic(None, None)  # K and V in f16, its default
        return Traffic(meta.get("size") or file.weight_bytes, file.kv_bytes_per_token)
    if engine.name == "ollama":
        from gaplab.runtimes.ollama import same_model

        show = post_json(root + "/api/show", {"model": served}, TIMEOUT) or {}
        tags = (get_json(root + "/api/tags", api_key, TIMEOUT) or {}).get("models", [])
        size = next((m.get("size") for m in tags if same_model(served, m.get("name", ""))), None)
        return Traffic(size, gguf_kv_bytes(show.get("model_info") or {}))
    if engine.name == "vllm":
        listed = (get_json(root + "/v1/models", api_key, TIMEOUT) or {}).get("data", [])
        path = _local(next((m.get("root") for m in listed if m.get("id") == served), None))
        return traffic_or_none(hf_traffic, path) if path else Traffic(None, None)
    if engine.name == "sglang":
        path = _local((get_json(root + "/get_model_info", api_key, TIMEOUT) or {}).get("model_path"))
        return traffic_or_none(hf_traffic, path) if path else Traffic(None, None)
    return Traffic(None, None)


def attached_traffic(runtime, model, engine: Engine, root: str, served: str, api_key: str | None) -> Traffic:
    """The model's bytes for an attached server: each figure from the server where it says it,
    else from the file the runtime's model_config names for the model."""
    own = served_traffic(engine, root, served, api_key)
    path = runtime.model_files.get(model.name)
    if path is None or (own.weight_bytes and own.kv_bytes_per_token):
        return own
    named = traffic_or_none(config_traffic, Path(path))
    if named == Traffic(None, None):
        raise RuntimeError(f"runtimes.{runtime.name}.model_config.{model.name}: {path} is neither a GGUF file nor a "
                           "Hugging Face config.json gaplab can read; name one of those")
    return Traffic(own.weight_bytes or named.weight_bytes, own.kv_bytes_per_token or named.kv_bytes_per_token)
