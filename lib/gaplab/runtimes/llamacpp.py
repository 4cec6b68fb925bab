"""llama.cpp's llama-server, started by gaplab on a free loopback port.

The server is always stopped: on return, on errors, on Ctrl-C, and when the process that
started it dies (see process.py).
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import field_validator

from gaplab.machine.modelfile import gguf_traffic, traffic_or_none
from gaplab.provision import llama_build, models
from gaplab.runtimes import Fields, RuntimeKind, Server, process
from gaplab.runtimes.process import free_port, wait_healthy
from gaplab.spec.config import BUILD_DIR
from gaplab.spec.workloads import one_of


class LlamaFields(Fields):
    kv_unified: bool = True  # -kvu: slots share the whole context instead of ctx_size / parallel each
    # which llama.cpp build serves it (provision.llama_build.BUILDS): native, or b10488-avx2, the
    # source and CPU flags of Ollama's runner
    build: str = "native"

    @field_validator("build")
    @classmethod
    def _known_build(cls, build: str) -> str:
        return one_of(build, llama_build.BUILDS)


def server_command(runtime, model_file: Path, port: int) -> list[str]:
    cmd = [str(llama_build.tool_path("llama-server", runtime.options.build)), "-m", str(model_file), "--host", "127.0.0.1",
           "--port", str(port), "-np", str(runtime.parallel), "-c", str(runtime.ctx_size),
           "-t", str(runtime.threads), "--metrics", "--no-webui"]
    if runtime.options.kv_unified:
        cmd.append("-kvu")  # slots share the whole context instead of ctx_size / parallel each
    return cmd + list(runtime.extra_args)


@contextmanager
def llama_server(runtime, model: str, quant: str, timeout: float = 180) -> Iterator[Server]:
    model_file = models.model_path(model, quant)
    info = models.model_info(model, quant)
    if not llama_build.llama_built(runtime.options.build):
        how = "" if runtime.options.build == "native" else f" --build {runtime.options.build}"
        raise RuntimeError(f"llama-server ({runtime.options.build} build) is not built: run 'gaplab local setup{how}'")
    port = free_port()
    cmd = server_command(runtime, model_file, port) + ["-a", model]
    log = BUILD_DIR / "logs" / f"llama-server-{runtime.name}-{model}-{quant}-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    traffic = traffic_or_none(gguf_traffic, model_file)  # K and V in f16, llama-server's default cache type
    with open(log, "wb") as logf:
        started = time.perf_counter_ns()
        proc = process.start(cmd, stdout=logf, stderr=subprocess.STDOUT)
        try:
            healthy = wait_healthy(base, proc, timeout, log)
            yield Server(base_url=base + "/v1", served_model=model, runtime_version=llama_build.llama_version(runtime.options.build),
                         engine_version=llama_build.BUILDS[runtime.options.build].engine, engine="llamacpp",
                         launch_command=shlex.join(cmd), extra_body=request_fields(runtime),
                         model_file=model_file.name, model_sha256=info["sha256"], model_note=info["note"],
                         pid=proc.pid, started_ns=started, healthy_ns=healthy, loaded_ns=healthy,
                         metrics_url=base + "/metrics", slots_url=base + "/slots", log_file=str(log),
                         weight_bytes=traffic.weight_bytes,
                         kv_bytes_per_token=traffic.kv_bytes_per_token)
        finally:
            proc.stop()


def request_fields(runtime) -> dict:
    """Fields every request carries: output forced to max_tokens; with prefix_cache off, no reuse of
    a slot's earlier prompt (cache_prompt false also skips the host-memory prompt cache's match)."""
    return {"ignore_eos": True, **({} if runtime.prefix_cache else {"cache_prompt": False}), **runtime.extra_body}


def identity_flags(runtime) -> dict:
    flags = {"parallel": runtime.parallel, "threads": runtime.threads, "ctx_size": runtime.ctx_size,
             "kv_unified": runtime.options.kv_unified, "extra_args": list(runtime.extra_args)}
    if runtime.options.build != "native":  # only then, so that native cells keep their keys
        flags["build"] = runtime.options.build
    return flags


def local_setup(models: list[str] | None, device: str = "cpu") -> None:
    """Nothing beyond the models' step: that builds llama.cpp (its tools make the quants)."""
    print(f"gaplab: llama.cpp tools in {llama_build.tool_path('llama-server').parent}")


KIND = RuntimeKind("llamacpp", starts=True, attaches=False, quick=True, identity_flags=identity_flags,
                   forcing=("ignore_eos",), fields=LlamaFields, display="llama.cpp", install=local_setup,
                   package_version=llama_build.LLAMA_CPP_PYTHON,
                   open=lambda cell, api_key: llama_server(cell.runtime, cell.model.name, cell.quant))
