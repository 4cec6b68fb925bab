"""Ollama, driven through its native API (/api/chat, /api/generate): started by gaplab, or
attached to by base_url.

Without a base_url gaplab starts `ollama serve` (provision.ollama finds the binary) on a free
loopback port, in a process group of its own (Ollama's llama-server runner outlives a
SIGKILLed server otherwise), imports the cell's GGUF file, the very file llama.cpp cells
serve, and loads the model before the first trial: the server's start and the model's load
are separate parts of the cold start. Every request carries num_thread and num_ctx from the
runtime's threads and ctx_size (a request whose load options differ restarts the runner);
requests through the OpenAI-compatible /v1 root cannot carry them, so the model served is
the imported one with these options as its defaults (provision.ollama.with_options).

Ollama reports per request how many tokens it evaluated and how long each phase took
(load, prompt, decode), and /api/ps says how much of a loaded model sits in GPU memory.
A model that does not fit is split silently between GPU and CPU, which can halve its
speed: gaplab reads /api/ps before and after every cell and the report says so.
For Ollama's OpenAI-compatible endpoint use `kind: openai` with base_url .../v1.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import psutil

from gaplab.machine.modelfile import gguf_traffic, traffic_or_none
from gaplab.measure.httpget import get_json, post_json
from gaplab.provision import models
from gaplab.provision import ollama as install
from gaplab.runtimes import RuntimeKind, Server, attached_flags, process
from gaplab.runtimes.identify import Engine, attached_traffic
from gaplab.runtimes.process import free_port
from gaplab.spec.config import BUILD_DIR


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def _names(name: str) -> set[str]:
    return {name, name.removesuffix(":latest"), name + ":latest"}


def same_model(a: str, b: str) -> bool:
    """Whether two of Ollama's model names are one model (":latest" is the tag a bare name means)."""
    return bool(_names(a) & _names(b))


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
    v = version.get("version", "?")
    traffic = attached_traffic(runtime, model, Engine("ollama", v), base, served, None)
    return Server(base_url=base, served_model=served, runtime_version=f"Ollama {v}", engine_version=install.engine(v),
                  engine="ollama", launch_command=f"attached to {base}", extra_body=dict(runtime.extra_body),
                  protocol="ollama", weight_bytes=traffic.weight_bytes, kv_bytes_per_token=traffic.kv_bytes_per_token)


def server_env(runtime, port: int) -> dict:
    """The started server's settings: its own models and HOME under the gaplab cache, no
    lookups to ollama.com, `parallel` slots per model."""
    return {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(install.MODELS_DIR),
            "HOME": str(install.HOME_DIR), "OLLAMA_NO_CLOUD": "1", "OLLAMA_NUM_PARALLEL": str(runtime.parallel),
            "OLLAMA_CONTEXT_LENGTH": str(runtime.ctx_size)}


def load_options(runtime) -> dict:
    """The options every request carries, beside num_predict: the runner's threads and context."""
    return {"num_thread": runtime.threads, "num_ctx": runtime.ctx_size}


def request_fields(runtime) -> dict:
    """What every request to a server gaplab started carries: the load options, and keep_alive -1,
    so the model stays loaded between trials (a runner that exits is then a dead server, never an
    idle unload); the scenario's extra_body over both."""
    options = {**load_options(runtime), **runtime.extra_body.get("options", {})}
    return {"keep_alive": -1, **runtime.extra_body, "options": options}


def served_name(model: str, quant: str) -> str:
    return f"{model}:{quant.lower()}"


@contextmanager
def ollama_server(runtime, model: str, quant: str, timeout: float = 120) -> Iterator[Server]:
    model_file = models.model_path(model, quant)
    if not model_file.exists():
        raise RuntimeError(f"models.{model}: the {quant} file {model_file} does not exist; "
                           f"run 'gaplab local setup --model {model}' or remove {quant} from the cell's quants")
    info = models.model_info(model, quant)
    binary = install.find_binary()
    name = served_name(model, quant)
    traffic = traffic_or_none(gguf_traffic, model_file)
    fields = request_fields(runtime)
    renewed = False
    for first in (True, False):
        with _serve(binary, runtime, f"{model}-{quant}", timeout) as (proc, base, env, started, healthy, log):
            digest, imported = install.import_gguf(binary, base, env, name, model_file, info["sha256"])
            renewed |= imported
            if imported and first:  # importing is provisioning, not a cold start: measure a fresh server
                continue
            served = install.with_options(base, name, fields["options"], renew=renewed)
            version = (get_json(base + "/api/version") or {}).get("version", "unknown")
            loaded = load(base, served, fields, timeout, log)
            yield Server(base_url=base, served_model=served, runtime_version=f"Ollama {version}",
                         engine_version=install.engine(version), engine="ollama",
                         launch_command=_launch_command(env, proc),
                         extra_body=fields, model_file=model_file.name, model_sha256=info["sha256"],
                         model_note=f"{info['note']}; imported into Ollama as {name}", served_digest=digest,
                         pid=proc.pid, started_ns=started, healthy_ns=healthy, loaded_ns=loaded, protocol="ollama",
                         log_file=str(log),
                         weight_bytes=traffic.weight_bytes, kv_bytes_per_token=traffic.kv_bytes_per_token)
            return


@contextmanager
def _serve(binary, runtime, what: str, timeout: float):
    """`ollama serve` on a free port until the block ends; yields the process, its root URL, its
    environment, and perf_counter_ns at its start and when it first answered."""
    for folder in (install.MODELS_DIR, install.HOME_DIR):
        folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base, env = f"http://127.0.0.1:{port}", server_env(runtime, port)
    log = BUILD_DIR / "logs" / f"ollama-{runtime.name}-{what}-{port}.log"
    with process.serving([str(binary), "serve"], log, port, timeout, env=env, path="/api/version") as (
            proc, _, started, healthy):
        yield proc, base, env, started, healthy, log


def _launch_command(env: dict, proc) -> str:
    """The server's command and, after `; runner:`, the llama-server command Ollama chose for the
    loaded model (its context, batch and slots differ from what gaplab gives llama.cpp)."""
    settings = ("OLLAMA_NUM_PARALLEL", "OLLAMA_CONTEXT_LENGTH", "OLLAMA_NO_CLOUD")
    cmd = shlex.join([f"{k}={env[k]}" for k in settings] + list(proc.proc.args))
    try:
        runners = [p.cmdline() for p in _runners(proc.pid)]
    except psutil.Error:  # a runner that ended while being read: the server's command alone
        runners = []
    return cmd + "".join(f"; runner: {shlex.join(r)}" for r in runners)


def _runners(pid: int) -> list[psutil.Process]:
    """The llama-server runners `ollama serve` (pid) has started, one per loaded model."""
    return [p for p in psutil.Process(pid).children(recursive=True) if p.name() == "llama-server"]


def runner_pids(pid: int) -> list[int]:
    """The runners' pids once the model is loaded: a runner that dies is a dead server (Ollama would
    start another on the next request, reloading the model in the middle of a trial)."""
    try:
        return [p.pid for p in _runners(pid)]
    except psutil.Error:
        return []


def load(base: str, name: str, fields: dict, timeout: float, log) -> int:
    """Load the model with the options the trials will send (an empty prompt only loads it);
    returns perf_counter_ns when it is loaded."""
    body = {"model": name, "keep_alive": fields["keep_alive"], "options": fields["options"]}
    if post_json(base + "/api/generate", body, timeout) is None:
        raise RuntimeError(f"Ollama at {base} could not load {name}; see {log}")
    return time.perf_counter_ns()


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


def identity_flags(runtime) -> dict:
    if runtime.base_url:
        return attached_flags(runtime)
    return {"parallel": runtime.parallel, "threads": runtime.threads, "ctx_size": runtime.ctx_size}


def open_ollama(cell, api_key):
    if cell.runtime.started_here:
        return ollama_server(cell.runtime, cell.model.name, cell.quant)
    return nullcontext(attach_ollama(cell.runtime, cell.model))


def local_setup(models: list[str] | None, device: str = "cpu") -> None:
    """Nothing to install: say which binary the servers will run, or how to get one."""
    binary = install.find_binary()
    print(f"gaplab: Ollama {install.binary_version(binary)} at {binary} (its models: {install.MODELS_DIR})")


KIND = RuntimeKind("ollama", starts=True, attaches=True, quick=True, identity_flags=identity_flags, open=open_ollama,
                   trial_facts=lambda server: placement(server.base_url, server.served_model),
                   facts_key="ollama_placement", protocol="ollama", runners=runner_pids, display="Ollama",
                   install=local_setup)
