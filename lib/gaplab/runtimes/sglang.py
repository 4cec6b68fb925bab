"""SGLang: attached by URL (base_url: an SGLang server someone started, its /v1 root), or started
by gaplab on a GPU from PyPI's sglang (provision.sglang_env) with its Prometheus metrics on, serving
the safetensors folder vLLM serves. Its metrics are read by the names of identify and decompose's
tables (engine "sglang"). Without a GPU, starting one is refused before anything runs.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from pydantic import Field

from gaplab.machine.hardware import hardware
from gaplab.machine.modelfile import hf_traffic, traffic_or_none
from gaplab.provision import sglang_env, vllm_env
from gaplab.runtimes import Fields, RuntimeKind, Server, process
from gaplab.runtimes.openai_compat import attach_openai
from gaplab.runtimes.process import free_port
from gaplab.spec.config import BUILD_DIR

DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


class SglangFields(Fields):
    # the share of GPU memory for weights and KV cache (SGLang's --mem-fraction-static); None: its own
    mem_fraction_static: float | None = Field(None, gt=0, lt=1)


def server_command(runtime, model: str, dtype: str, port: int) -> list[str]:
    cmd = [str(sglang_env.venv_python()), "-m", "sglang.launch_server", "--model-path",
           str(vllm_env.converted_dir(model, "float32")), "--served-model-name", model, "--dtype", dtype,
           "--host", "127.0.0.1", "--port", str(port), "--context-length", str(runtime.ctx_size),
           "--max-running-requests", str(runtime.parallel), "--enable-metrics"]
    if runtime.options.mem_fraction_static is not None:
        cmd += ["--mem-fraction-static", str(runtime.options.mem_fraction_static)]
    if not runtime.prefix_cache:
        cmd.append("--disable-radix-cache")
    return cmd + list(runtime.extra_args)


@contextmanager
def sglang_server(runtime, model: str, quant: str, timeout: float = 900) -> Iterator[Server]:
    dtype = DTYPES.get(quant.upper())
    if dtype is None:
        raise RuntimeError(f"models.{model}.quants: SGLang cells take {', '.join(DTYPES)}, not {quant!r}")
    if not hardware()["gpus"]:
        raise RuntimeError(f"runtime {runtime.name}: SGLang runs on a GPU, and no NVIDIA GPU was found on this "
                           "machine (nvidia-smi lists none); run it on a GPU box, or attach to one with base_url")
    if not sglang_env.installed():
        raise RuntimeError("SGLang is not installed: run 'gaplab local setup --runtime sglang'")
    folder = vllm_env.convert(model, "float32", python=sglang_env.venv_python())
    port = free_port()
    cmd = server_command(runtime, model, dtype, port)
    log = BUILD_DIR / "logs" / f"sglang-{runtime.name}-{model}-{quant}-{port}.log"
    src = json.loads((folder / "gaplab-source.json").read_text())
    traffic = traffic_or_none(hf_traffic, folder, dtype)
    with process.serving(cmd, log, port, timeout, grace=10) as (proc, base, started, healthy):
        version = sglang_env.sglang_version()
        yield Server(base_url=base + "/v1", served_model=model, runtime_version=version, engine_version=version,
                     engine="sglang", launch_command=shlex.join(cmd), extra_body=request_fields(runtime),
                     model_file=f"{folder.name} (from {src['source']})", model_sha256=src["source_sha256"],
                     model_note=f"{src['note']}; served as {dtype}", pid=proc.pid, started_ns=started,
                     healthy_ns=healthy, loaded_ns=healthy, metrics_url=base + "/metrics", log_file=str(log),
                     weight_bytes=traffic.weight_bytes, kv_bytes_per_token=traffic.kv_bytes_per_token)


def request_fields(runtime) -> dict:
    """Fields every request carries: output forced to max_tokens (SGLang's ignore_eos), then the scenario's."""
    return {"ignore_eos": True, **runtime.extra_body}


def identity_flags(runtime) -> dict:
    if runtime.base_url:
        return {"base_url": runtime.base_url}
    return {"max_running_requests": runtime.parallel, "context_length": runtime.ctx_size,
            "mem_fraction_static": runtime.options.mem_fraction_static, "extra_args": list(runtime.extra_args)}


def open_sglang(cell, api_key):
    if cell.runtime.base_url:
        return nullcontext(attach_openai(cell.runtime, cell.model, api_key))
    return sglang_server(cell.runtime, cell.model.name, cell.quant)


def local_setup(models: list[str] | None, device: str = "cpu") -> None:
    """SGLang in its own venv, and each model converted to the folder it serves."""
    sglang_env.install()
    for name in models or ["smollm2-135m"]:
        vllm_env.convert(name, "float32", python=sglang_env.venv_python())
    print(f"gaplab: SGLang {sglang_env.SGLANG} in {sglang_env.venv_python().parent.parent}")


# quick=False: SGLang compiles and captures CUDA graphs at start; quality measures it only on request
KIND = RuntimeKind("sglang", starts=True, attaches=True, quick=False, identity_flags=identity_flags,
                   open=open_sglang, forcing=("ignore_eos",), fields=SglangFields, display="SGLang",
                   install=local_setup, package_version=sglang_env.SGLANG)
