"""Runtime adapters: start (or attach to) a server for a cell and describe it.

Each adapter module of this package defines `KIND`, a RuntimeKind: everything about that kind
of runtime in one place. Whether gaplab starts the server, attaches to one by URL, or either (it
starts one when no base_url is given); its own scenario fields (a Fields model, beside every
runtime's in spec.scenario.RuntimeSpec); the launch flags that make its identity; how to open a
server for a cell (a context manager yielding a Server: where to send requests, how to force the
output length there, the facts stored with the run); its stream protocol; what `gaplab local
setup` installs for it; its name on the pages. `kinds()` finds the modules of this package, and
a module outside it that a distribution registers under the `gaplab.runtimes` entry point group
(`name = "module:KIND"`): adding a runtime is adding one module, and registering it nowhere else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from importlib.metadata import entry_points

from pydantic import BaseModel, ConfigDict


class Fields(BaseModel):
    """A kind's own scenario fields: subclass it in the kind's module. They sit in the runtime's YAML
    mapping beside every runtime's fields (spec.scenario.RuntimeSpec) and are read as
    `runtime.options.NAME`; another kind's field is refused in one line."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class RuntimeKind:
    name: str  # the scenario's `kind`
    starts: bool  # gaplab can start the server (and stop it)
    attaches: bool  # gaplab can attach to one already running at base_url
    quick: bool  # up in seconds, or already up: `gaplab quality` measures it unless told otherwise
    open: Callable  # (cell, api_key) -> context manager yielding a Server
    identity_flags: Callable  # RuntimeSpec -> the launch flags that make its identity (part of cell keys)
    # Server -> facts read before and after each trial, stored under facts_key; "size" and
    # "size_vram" (the model's bytes in memory and in GPU memory) also become run columns
    trial_facts: Callable | None = None
    facts_key: str = ""  # the run metadata key those facts are stored under
    protocol: str = "openai"  # how its streams are read: "openai" (SSE) or "ollama" (native NDJSON)
    forcing: tuple[str, ...] = ()  # request fields its adapter sets to force the output length
    # server pid -> the pids of processes it runs the model in (Ollama's runner), found once the
    # server has answered: one of them that exits is a dead server, as the server itself is
    runners: Callable | None = None
    fields: type[Fields] = Fields  # its own scenario fields
    display: str = ""  # its name on the pages (default: the kind's name)
    # (models: list[str] | None, device: "cpu" or "cuda") -> None: `gaplab local setup --runtime NAME`
    install: Callable | None = None
    package_version: str = ""  # the version gaplab installs for it (capability probe runs are keyed by it)

    @property
    def label(self) -> str:
        return self.display or self.name

    @property
    def reserved(self) -> tuple[str, ...]:
        """Request fields gaplab sets for this kind (dotted: nested), which extra_body may not set:
        those that force each request's output length and stream it."""
        from gaplab.measure.protocols import LENGTH_FIELDS

        return LENGTH_FIELDS[self.protocol] + self.forcing

    def started_here(self, base_url: str | None) -> bool:
        """Whether a runtime of this kind is started by gaplab: always for a kind that cannot attach,
        and for one that can do both when no base_url is given."""
        return self.starts and not (self.attaches and base_url)


def attached_flags(runtime) -> dict:
    """The identity of a server someone else started: where it is."""
    return {"base_url": runtime.base_url}


@cache
def kinds() -> dict[str, RuntimeKind]:
    """Every RuntimeKind, by name: each adapter module's KIND in this package, then those registered
    under the `gaplab.runtimes` entry point group."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, RuntimeKind):
            found[kind.name] = kind
    for point in entry_points(group="gaplab.runtimes"):
        kind = point.load()
        if not isinstance(kind, RuntimeKind):
            raise TypeError(f"entry point gaplab.runtimes {point.name} = {point.value} is not a RuntimeKind")
        found.setdefault(kind.name, kind)
    return found


@dataclass
class Server:
    base_url: str  # where streams go: the OpenAI-compatible /v1 root, or Ollama's native root (protocol)
    served_model: str  # the model name to put in requests
    runtime_version: str
    engine_version: str = ""  # the inference engine under the server (Ollama runs llama.cpp)
    # the server software that answers, a key of identify.NAMES: what its metrics and figures mean
    # (the kind for servers gaplab starts, what answered the probes for one attached by URL)
    engine: str | None = None
    api_key: str | None = None
    launch_command: str = ""
    extra_body: dict = field(default_factory=dict)  # forces output length where the runtime allows it
    model_file: str = ""
    model_sha256: str = ""
    model_note: str = ""
    served_digest: str = ""  # the server's own id of the weights it serves (Ollama's digest)
    pid: int | None = None
    started_ns: int | None = None  # perf_counter_ns at process start (servers gaplab starts)
    healthy_ns: int | None = None  # perf_counter_ns when /health first answered 200
    # when the model was loaded: healthy_ns where the server loads it before it answers (llama.cpp,
    # vLLM); later where the first request loads it (Ollama)
    loaded_ns: int | None = None
    first_token_ns: int | None = None  # first token of a probe request sent once healthy
    metrics_url: str | None = None  # Prometheus text endpoint, sampled by telemetry
    slots_url: str | None = None  # llama.cpp's /slots, sampled by telemetry
    protocol: str = "openai"  # how streams are read: "openai" (SSE) or "ollama" (native NDJSON)
    weight_bytes: int | None = None  # the weights a decode step reads (modelfile.Traffic)
    kv_bytes_per_token: int | None = None  # K and V cache per token of one sequence's context
    log_file: str = ""  # the server's log (servers gaplab starts): its last lines tell why it died
    watch_pids: list[int] = field(default_factory=list)  # its processes: one that exits is a dead server
    restarts: int = 0  # how many times gaplab started this server again after it died

    @property
    def openai_url(self) -> str:
        """The OpenAI-compatible /v1 root, for calls the openai SDK makes (Ollama serves one beside its own API)."""
        return self.base_url.rstrip("/") + "/v1" if self.protocol == "ollama" else self.base_url

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("api_key")  # never stored
        return d


@contextmanager
def open_server(cell, attach: Server | None = None) -> Iterator[Server]:
    """Start the cell's server, or use one already running (attach: with no API key, which never
    leaves this process's environment)."""
    if attach:
        yield replace(attach, api_key=_api_key(cell.runtime))
        return
    kind = kinds()[cell.runtime.kind]
    with kind.open(cell, _api_key(cell.runtime)) as server:
        if cell.runtime.started_here:  # the cold start ends at the first token of a probe request
            server.first_token_ns = probe(server, cell.model.api)
            server.watch_pids = [server.pid] + (kind.runners(server.pid) if kind.runners else [])
        yield server


def probe(server: Server, api: str) -> int | None:
    """Send one short request to a server just started: its first token ends the cold start."""
    from gaplab.measure.client import StreamClient
    from gaplab.measure.loadgen import run_sync
    from gaplab.measure.records import RequestRecord

    async def one() -> RequestRecord:
        rec = RequestRecord(index=-1, user=0, warmup=True, scheduled_ns=0)
        async with StreamClient(server.base_url, api, server.api_key, 600, server.protocol) as client:
            return await client.stream(client.body("Hello", 2, server.served_model, server.extra_body), rec)

    rec = run_sync(one)
    if rec.error:
        raise RuntimeError(f"the server started but its first request failed: {rec.error}")
    return rec.first_token_ns


def _api_key(runtime) -> str | None:
    import os

    if runtime.started_here or not runtime.api_key_env:
        return None
    key = os.environ.get(runtime.api_key_env)
    if not key:
        raise RuntimeError(f"runtimes.{runtime.name}.api_key_env: environment variable "
                           f"{runtime.api_key_env} is not set; export it before the sweep")
    return key
