"""Ollama, attached by URL and driven through its native API (/api/chat, /api/generate).

Ollama reports per request how many tokens it evaluated and how long each phase took
(load, prompt, decode), and /api/ps says how much of a loaded model sits in GPU memory.
A model that does not fit is split silently between GPU and CPU, which can halve its
speed: gaplab reads /api/ps before and after every cell and the report says so.
For Ollama's OpenAI-compatible endpoint use `kind: openai` with base_url .../v1.
"""

from __future__ import annotations

from contextlib import nullcontext

from gaplab.runtimes import RuntimeKind, Server, attached_flags
from gaplab.httpget import get_json


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def _names(name: str) -> set[str]:
    return {name, name.removesuffix(":latest"), name + ":latest"}


def attach_ollama(runtime, model) -> Server:
    base = _root(runtime.base_url)
    version = get_json(base + "/api/version", None)
    if version is None:
        raise RuntimeError(f"runtimes.{runtime.name}.base_url: no Ollama server answers at {base}/api/version; "
                           "start it with 'ollama serve' or fix the URL")
    served = runtime.served_name(model)
    tags = get_json(base + "/api/tags", None) or {}
    names = [m.get("name", "") for m in tags.get("models", [])]
    if names and not any(_names(served) & _names(n) for n in names):
        raise RuntimeError(f"models.{model.name}: Ollama at {base} has {names}, not {served!r}; "
                           f"run 'ollama pull {served}' or set served_name")
    return Server(base_url=base, served_model=served, runtime_version=f"Ollama {version.get('version', '?')}",
                  launch_command=f"attached to {base}", extra_body=dict(runtime.extra_body), protocol="ollama")


def where(size: int, size_vram: int) -> dict:
    """A model's bytes in memory and in GPU memory, as the report reads them."""
    return {"size": size, "size_vram": size_vram, "gpu_fraction": round(size_vram / size, 4) if size else None,
            "split": 0 < size_vram < size, "cpu_only": size > 0 and size_vram == 0}


def placement(base_url: str, served: str) -> dict | None:
    """Where the model sits now, from /api/ps: None when it is not loaded."""
    ps = get_json(_root(base_url) + "/api/ps", None) or {}
    for m in ps.get("models", []):
        if _names(served) & _names(m.get("name", "")) or _names(served) & _names(m.get("model", "")):
            return {"name": m.get("name"), **where(m.get("size") or 0, m.get("size_vram") or 0),
                    "context_length": m.get("context_length"), "expires_at": m.get("expires_at")}
    return None


def describe(p: dict | None) -> str:
    """The placement in plain words, for the report."""
    if p is None:
        return "not loaded"
    if p["split"]:
        return (f"split between GPU and CPU: {p['gpu_fraction']:.0%} of {p['size'] / 2**30:.1f} GiB in GPU "
                f"memory, the rest on the CPU")
    return "entirely on the CPU" if p["cpu_only"] else "entirely in GPU memory"


KIND = RuntimeKind("ollama", started_here=False, quick=True, identity_flags=attached_flags,
                   open=lambda cell, api_key: nullcontext(attach_ollama(cell.runtime, cell.model)),
                   trial_facts=lambda server: placement(server.base_url, server.served_model),
                   facts_key="ollama_placement", protocol="ollama")
