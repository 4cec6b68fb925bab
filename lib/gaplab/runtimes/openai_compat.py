"""Attach to any OpenAI-compatible server someone else started, by base URL.

Which engine serves it (llama.cpp, vLLM, SGLang, TGI, Ollama) is asked of the server itself
(identify.py): the run records it, its metrics are read by that engine's names, and the
model's bytes come from what the server says or from the runtime's model_config.
"""

from __future__ import annotations

from contextlib import nullcontext

from gaplab.measure.httpget import get_json
from gaplab.runtimes import RuntimeKind, Server, attached_flags
from gaplab.runtimes.identify import attached_traffic, identify


def attach_openai(runtime, model, api_key: str | None) -> Server:
    base = runtime.base_url.rstrip("/")
    listed = get_json(base + "/models", api_key)
    if listed is None:
        raise RuntimeError(f"runtimes.{runtime.name}.base_url: no OpenAI-compatible server answers "
                           f"at {base}/models; start it or fix the URL")
    served = runtime.served_name(model)
    ids = [m.get("id") for m in listed.get("data", [])]
    if ids and served not in ids:
        raise RuntimeError(f"models.{model.name}: the server at {base} serves {ids}, not {served!r}; "
                           "set served_name to one of those")
    root = base.removesuffix("/v1")
    engine = identify(root, api_key)
    traffic = attached_traffic(runtime, model, engine, root, served, api_key)
    slots = engine.name == "llamacpp" and engine.facts.get("endpoint_slots")  # llama-server --slots (default on)
    return Server(base_url=base, served_model=served, api_key=api_key,
                  runtime_version=f"{engine.label} behind an OpenAI-compatible URL", engine=engine.name,
                  engine_version=under(engine), launch_command=f"attached to {base}",
                  extra_body=dict(runtime.extra_body), metrics_url=None if engine.name == "ollama" else root + "/metrics",
                  slots_url=root + "/slots" if slots else None, weight_bytes=traffic.weight_bytes,
                  kv_bytes_per_token=traffic.kv_bytes_per_token)


def under(engine) -> str:
    """The inference engine under the server, as runs record it (engine_version): Ollama's runner,
    else the engine itself."""
    from gaplab.provision.ollama import engine as ollama_runner

    if engine.name == "ollama":
        return ollama_runner(engine.version)
    return engine.label if engine.name else ""


KIND = RuntimeKind("openai", starts=False, attaches=True, quick=True, identity_flags=attached_flags,
                   open=lambda cell, api_key: nullcontext(attach_openai(cell.runtime, cell.model, api_key)))
