"""Attach to any OpenAI-compatible server someone else started, by base URL."""

from __future__ import annotations

from contextlib import nullcontext

from gaplab.httpget import get_json
from gaplab.runtimes import RuntimeKind, Server, attached_flags


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
    # vLLM answers /version at the server root; others may not say.
    version = get_json(base.removesuffix("/v1") + "/version", api_key) or {}
    return Server(base_url=base, served_model=served, api_key=api_key,
                  runtime_version=str(version.get("version", "unknown")),
                  launch_command=f"attached to {base}", extra_body=dict(runtime.extra_body),
                  metrics_url=base.removesuffix("/v1") + "/metrics")


KIND = RuntimeKind("openai", starts=False, attaches=True, quick=True, identity_flags=attached_flags,
                   open=lambda cell, api_key: nullcontext(attach_openai(cell.runtime, cell.model, api_key)))
