"""llama.cpp's llama-server, started by gaplab on a free loopback port.

The server is always stopped: on return, on errors, on Ctrl-C, and when the process that
started it dies (see process.py). With device: cuda it is the CUDA build, every layer on the
GPU; on a machine without one it is refused before it starts.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gaplab.machine.hardware import hardware
from gaplab.machine.modelfile import gguf_traffic, traffic_or_none
from gaplab.provision import llama_build, models
from gaplab.runtimes import Fields, RuntimeKind, Server, process
from gaplab.runtimes.process import free_port
from gaplab.spec.config import BUILD_DIR
from gaplab.spec.workloads import one_of


class LlamaFields(Fields):
    kv_unified: bool = True  # -kvu: slots share the whole context instead of ctx_size / parallel each
    # which llama.cpp build serves it (provision.llama_build.BUILDS): native, or b10488-avx2, the
    # source and CPU flags of Ollama's runner
    build: str = "native"
    # where it runs. cuda: the CUDA build of the native source (gaplab local setup --runtime
    # llamacpp --device cuda) with every layer on the GPU, for the architecture cuda_arch
    # (CMake's number: 89 the RTX 4090, 120 the RTX 5090; see llama_build.CUDA_ARCH)
    device: Literal["cpu", "cuda"] = "cpu"
    cuda_arch: int = Field(llama_build.CUDA_ARCH, ge=75, le=199)  # 75: the oldest CUDA 13 compiles for

    @field_validator("build")
    @classmethod
    def _known_build(cls, build: str) -> str:
        return one_of(build, llama_build.BUILDS)

    @model_validator(mode="after")
    def _cuda_build(self) -> "LlamaFields":
        if self.device == "cuda" and self.build != "native":
            raise ValueError(f"device: the CUDA build is of the native source, not '{self.build}'; remove build")
        if "cuda_arch" in self.model_fields_set and self.device != "cuda":
            raise ValueError("cuda_arch: only with device: cuda; remove it or set device: cuda")
        return self


def build_name(runtime) -> str:
    """The llama.cpp build that serves a runtime: its `build`, or the CUDA one for its device."""
    opts = runtime.options
    return llama_build.cuda_name(opts.cuda_arch) if opts.device == "cuda" else opts.build


def server_command(runtime, model_file: Path, port: int) -> list[str]:
    cmd = [str(llama_build.tool_path("llama-server", build_name(runtime))), "-m", str(model_file), "--host",
           "127.0.0.1", "--port", str(port), "-np", str(runtime.parallel), "-c", str(runtime.ctx_size),
           "-t", str(runtime.threads), "--metrics", "--no-webui"]
    if runtime.options.device == "cuda":
        cmd += ["-ngl", "all"]  # every layer on the GPU, as a GPU box's users run it
    if runtime.options.kv_unified:
        cmd.append("-kvu")  # slots share the whole context instead of ctx_size / parallel each
    return cmd + list(runtime.extra_args)


@contextmanager
def llama_server(runtime, model: str, quant: str, timeout: float = 180) -> Iterator[Server]:
    model_file = models.model_path(model, quant)
    info = models.model_info(model, quant)
    build, opts = build_name(runtime), runtime.options
    if opts.device == "cuda" and not hardware()["gpus"]:
        raise RuntimeError(f"runtime {runtime.name}: device cuda, but no NVIDIA GPU was found on this machine "
                           "(nvidia-smi lists none); run it on a GPU box, or set device: cpu")
    if not llama_build.llama_built(build):
        how = ("" if build == "native" else f" --build {build}" if opts.device == "cpu"
               else f" --runtime llamacpp --device cuda --cuda-arch {opts.cuda_arch}")
        raise RuntimeError(f"llama-server ({build} build) is not built: run 'gaplab local setup{how}'")
    port = free_port()
    cmd = server_command(runtime, model_file, port) + ["-a", model]
    log = BUILD_DIR / "logs" / f"llama-server-{runtime.name}-{model}-{quant}-{port}.log"
    traffic = traffic_or_none(gguf_traffic, model_file)  # K and V in f16, llama-server's default cache type
    # a GPU newer than the build's architecture compiles its PTX at the first load (minutes)
    with process.serving(cmd, log, port, max(timeout, 600) if opts.device == "cuda" else timeout) as (
            proc, base, started, healthy):
        yield Server(base_url=base + "/v1", served_model=model, runtime_version=llama_build.llama_version(build),
                     engine_version=llama_build.get(build).engine, engine="llamacpp",
                     launch_command=shlex.join(cmd), extra_body=request_fields(runtime),
                     model_file=model_file.name, model_sha256=info["sha256"], model_note=info["note"],
                     pid=proc.pid, started_ns=started, healthy_ns=healthy, loaded_ns=healthy,
                     metrics_url=base + "/metrics", slots_url=base + "/slots", log_file=str(log),
                     weight_bytes=traffic.weight_bytes, kv_bytes_per_token=traffic.kv_bytes_per_token)


def request_fields(runtime) -> dict:
    """Fields every request carries: output forced to max_tokens; with prefix_cache off, no reuse of
    a slot's earlier prompt (cache_prompt false also skips the host-memory prompt cache's match)."""
    return {"ignore_eos": True, **({} if runtime.prefix_cache else {"cache_prompt": False}), **runtime.extra_body}


def identity_flags(runtime) -> dict:
    flags = {"parallel": runtime.parallel, "threads": runtime.threads, "ctx_size": runtime.ctx_size,
             "kv_unified": runtime.options.kv_unified, "extra_args": list(runtime.extra_args)}
    if runtime.options.build != "native":  # only then, so that native cells keep their keys
        flags["build"] = runtime.options.build
    if runtime.options.device == "cuda":  # likewise
        flags.update(device="cuda", cuda_arch=runtime.options.cuda_arch)
    return flags


def local_setup(models: list[str] | None, device: str = "cpu") -> None:
    """Nothing beyond the models' step: that builds llama.cpp (its tools make the quants)."""
    print(f"gaplab: llama.cpp tools in {llama_build.tool_path('llama-server').parent}")


KIND = RuntimeKind("llamacpp", starts=True, attaches=False, quick=True, identity_flags=identity_flags,
                   forcing=("ignore_eos",), fields=LlamaFields, display="llama.cpp", install=local_setup,
                   package_version=llama_build.LLAMA_CPP_PYTHON,
                   open=lambda cell, api_key: llama_server(cell.runtime, cell.model.name, cell.quant))
