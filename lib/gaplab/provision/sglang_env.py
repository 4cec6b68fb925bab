"""SGLang (PyPI's `sglang`, a CUDA build) in a virtual environment of its own, for `kind: sglang`
servers gaplab starts on a GPU. The release is pinned (SGLANG): the newest on PyPI when this was
written, 2026-12-07, so that two machines that install it run the same code. It serves the same
safetensors folder vLLM does (vllm_env.convert, run in this venv). Installing needs no GPU;
starting it does (runtimes/sglang.py refuses without one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gaplab.provision import SetupError
from gaplab.spec.config import CACHE_DIR

SGLANG = "0.5.23"
EXTRA = ["gguf>=0.10", "accelerate"]  # transformers reads the shipped GGUF files with them (conversion)


def sglang_dir() -> Path:
    return CACHE_DIR / "sglang" / SGLANG


def venv_python() -> Path:
    return sglang_dir() / "venv" / "bin" / "python"


def installed() -> bool:
    return (sglang_dir() / "installed.json").exists() and venv_python().exists()


def install_command() -> list[str]:
    return [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
            f"sglang=={SGLANG}", *EXTRA]


def install(force: bool = False) -> Path:
    """Install sglang into its own venv (cached); returns its python."""
    if installed() and not force:
        return venv_python()
    base = sglang_dir()
    base.mkdir(parents=True, exist_ok=True)
    if not venv_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    print(f"gaplab: SGLang: installing sglang {SGLANG} and its CUDA torch: several GB", flush=True)
    res = subprocess.run(install_command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        (base / "install.log").write_text(res.stdout)
        raise SetupError(f"SGLang install failed; see {base / 'install.log'}")
    (base / "installed.json").write_text(json.dumps({"sglang": SGLANG}))
    return venv_python()


def sglang_version() -> str:
    res = subprocess.run([str(venv_python()), "-c", "from importlib.metadata import version; "
                          "print(version('sglang'), version('torch'))"], capture_output=True, text=True)
    sglang, torch = (res.stdout.split() + ["?", "?"])[:2]
    return f"SGLang {sglang} (torch {torch})"
