"""llama.cpp's tools, built from the source vendored in PyPI's llama-cpp-python sdist."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from tqdm import tqdm

from gaplab.config import CACHE_DIR
from gaplab.provision import SetupError
from gaplab.provision.pypi import pip_download


LLAMA_CPP_PYTHON = "0.3.36"
# The llama.cpp it vendors (the sdist's CHANGELOG; a build from the sdist has no git, so the
# tools themselves say "build 0, commit unknown")
ENGINE = "llama.cpp 0c1e57098 (vendored by llama-cpp-python 0.3.36)"
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"]
# The build is native (-march=native), which compiles ggml's Intel AMX kernels wherever the CPU
# reports AMX. On virtual machines whose hypervisor reports AMX but does not run it (seen on a
# Sapphire Rapids guest of this kind: llama-server died with a general protection fault in its
# warmup, for every quant that goes to the AMX buffer) nothing quantized could be measured.
# AMX only speeds up some quants' matrix products; a build that runs everywhere matters more.
# An explicit -mno-* wins over -march=native whatever the order (GCC and Clang).
if platform.machine().lower() in ("x86_64", "amd64"):
    NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_FLAGS += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
TOOLS = ["llama-server", "llama-quantize", "llama-perplexity", "llama-bench"]


def llama_dir() -> Path:
    return CACHE_DIR / "llama.cpp" / LLAMA_CPP_PYTHON


def tool_path(tool: str) -> Path:
    return llama_dir() / "build" / "bin" / tool


def _stamp() -> dict:
    return {"llama_cpp_python": LLAMA_CPP_PYTHON, "cmake_flags": CMAKE_FLAGS, "targets": TOOLS}


def llama_built() -> bool:
    stamp = llama_dir() / "build" / "gaplab-stamp.json"
    return (stamp.exists() and json.loads(stamp.read_text()) == _stamp()
            and all(tool_path(t).exists() for t in TOOLS))


def build_llama_cpp(force: bool = False) -> Path:
    """Build the four llama.cpp tools from the sdist's vendor/llama.cpp; returns the bin folder."""
    if llama_built() and not force:
        return tool_path("llama-server").parent
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            raise SetupError(f"'{tool}' is not installed: run 'apt-get install -y cmake g++' and retry")
    base = llama_dir()
    src = base / "src"
    if not (src / "CMakeLists.txt").exists():
        sdist = pip_download(f"llama-cpp-python=={LLAMA_CPP_PYTHON}", CACHE_DIR / "downloads", sdist=True)
        print(f"gaplab: unpacking llama.cpp from {sdist.name}", flush=True)
        tmp = base / "unpack"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
            tar.extractall(tmp, members=[m for m in tar.getmembers() if m.name.startswith(prefix)],
                           filter="data")
        shutil.rmtree(src, ignore_errors=True)
        (tmp / prefix).rename(src)
        shutil.rmtree(tmp)
    build = base / "build"
    log = base / "build.log"
    with open(log, "w") as logf:
        res = subprocess.run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS],
                             stdout=logf, stderr=subprocess.STDOUT)
        if res.returncode != 0:
            raise SetupError(f"cmake configure failed; see {log}")
        proc = subprocess.Popen(["cmake", "--build", str(build), "-j2", "--target", *TOOLS],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with tqdm(total=100, desc="building llama.cpp", unit="%", file=sys.stdout) as bar:
            for line in proc.stdout:  # type: ignore[union-attr]
                logf.write(line)
                m = re.match(r"\[\s*(\d+)%\]", line)
                if m and int(m.group(1)) > bar.n:
                    bar.update(int(m.group(1)) - bar.n)
        if proc.wait() != 0:
            raise SetupError(f"llama.cpp build failed; the last lines of {log} say why")
    (build / "gaplab-stamp.json").write_text(json.dumps(_stamp()))
    return tool_path("llama-server").parent


def llama_version() -> str:
    """llama.cpp's own version line, plus the sdist it came from."""
    out = subprocess.run([str(tool_path("llama-server")), "--version"], capture_output=True, text=True)
    line = next((s for s in (out.stdout + out.stderr).splitlines() if s.startswith("version")), "unknown")
    return f"llama.cpp {line.removeprefix('version:').strip()} (llama-cpp-python {LLAMA_CPP_PYTHON} sdist)"
