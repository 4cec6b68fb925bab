"""Runtime adapters: start (or attach to) a server for a cell and describe it.

Each adapter is a context manager yielding a Server: where to send requests, how to
force the output length there, and the facts stored with the run.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from collections.abc import Iterator


@dataclass
class Server:
    base_url: str  # OpenAI-compatible root, ending in /v1
    served_model: str  # the model name to put in requests
    runtime_version: str
    api_key: str | None = None
    launch_command: str = ""
    extra_body: dict = field(default_factory=dict)  # forces output length where the runtime allows it
    model_file: str = ""
    model_sha256: str = ""
    model_note: str = ""
    pid: int | None = None
    started_ns: int | None = None  # perf_counter_ns at process start (servers gaplab starts)
    healthy_ns: int | None = None  # perf_counter_ns when /health first answered 200

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("api_key")  # never stored
        return d


@contextmanager
def open_server(cell, attach: dict | None = None) -> Iterator[Server]:
    """Start the cell's server, or wrap one already running (attach: a Server as a dict)."""
    if attach:
        yield Server(**attach, api_key=_api_key(cell.runtime))
        return
    if cell.runtime.kind == "llamacpp":
        from gaplab.runtimes.llamacpp import llama_server

        with llama_server(cell.runtime, cell.model.name, cell.quant) as server:
            yield server
    else:
        from gaplab.runtimes.openai_compat import attach_openai

        yield attach_openai(cell.runtime, cell.model, _api_key(cell.runtime))


def _api_key(runtime) -> str | None:
    import os

    if runtime.kind != "openai" or not runtime.api_key_env:
        return None
    key = os.environ.get(runtime.api_key_env)
    if not key:
        raise RuntimeError(f"runtimes.{runtime.name}.api_key_env: environment variable "
                           f"{runtime.api_key_env} is not set; export it before the sweep")
    return key
