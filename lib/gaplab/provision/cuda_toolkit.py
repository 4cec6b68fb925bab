"""The CUDA compiler and libraries that llama.cpp's CUDA build compiles and links with.

A toolkit already on this machine (CUDA_HOME, or nvcc on PATH) is used when it has what the
build needs; otherwise CUDA 13.0 is installed from PyPI's wheels into the cache folder. No GPU
and no driver are needed to compile: the build links libcudart and cuBLAS, and llama.cpp's
VMM pool, the one part that would link the driver (libcuda), is left out (GGML_CUDA_NO_VMM).

Why 13.0: PyPI's CUDA 12 compiler wheels (nvidia-cuda-nvcc-cu12 12.6 to 12.9) carry ptxas and
libnvvm but no nvcc; the CUDA 13 wheels carry the whole compiler, into one folder (nvidia/cu13)
laid out as a toolkit. 13.0 is the oldest of them: every 13.x needs an r580 driver or newer,
and PTX from 13.0 is the kind such a driver compiles whatever its minor version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gaplab.provision import SetupError
from gaplab.spec.config import CACHE_DIR

CUDA_VERSION = "13.0"
# pinned together: nvcc's own dependencies (crt, nvvm) are not pinned by its wheel
WHEELS = ("nvidia-cuda-nvcc==13.0.88", "nvidia-cuda-crt==13.0.88", "nvidia-nvvm==13.0.88",
          "nvidia-cuda-runtime==13.0.96", "nvidia-cublas==13.0.2.14", "nvidia-cuda-cccl==13.0.85")
# what llama.cpp's ggml-cuda compiles against and links (its CMakeLists: CUDA::cudart, CUDA::cublas)
NEEDS = ("bin/nvcc", "include/cuda_runtime.h", "include/cublas_v2.h", "include/cccl/cub/cub.cuh")
LIBS = ("cudart", "cublas", "cublasLt")


@dataclass(frozen=True)
class Toolkit:
    root: Path  # the folder with bin/nvcc, include/ and lib64/
    version: str  # nvcc's release, e.g. 13.0.88
    source: str  # where it came from, as a user reads it

    @property
    def nvcc(self) -> Path:
        return self.root / "bin" / "nvcc"

    def cmake_flags(self) -> list[str]:
        return [f"-DCUDAToolkit_ROOT={self.root}", f"-DCMAKE_CUDA_COMPILER={self.nvcc}"]


def wheels_root() -> Path:
    return CACHE_DIR / "cuda" / CUDA_VERSION / "nvidia" / "cu13"


def lacking(root: Path) -> list[str]:
    """What a toolkit folder lacks of what the build needs (empty: it can build)."""
    missing = [part for part in NEEDS if not (root / part).exists()]
    libdirs = [root / "lib64", root / "lib", root / "targets" / "x86_64-linux" / "lib"]
    missing += [f"lib{lib}.so" for lib in LIBS if not any((d / f"lib{lib}.so").exists() for d in libdirs)]
    return missing


def nvcc_version(nvcc: Path) -> str:
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"\bV(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else "unknown"


def _nvcc_root(nvcc: str) -> Path:
    """The toolkit an nvcc on PATH belongs to, as nvcc itself says (it may be a wrapper script)."""
    out = subprocess.run([nvcc, "-v", "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True)
    m = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.M)
    return Path(m.group(1)).parent if m else Path(nvcc).resolve().parent.parent


def found() -> tuple[Toolkit | None, str]:
    """A toolkit on this machine that can build llama.cpp, else None and why not (empty: none at all)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    if home:
        root, where = Path(home), "CUDA_HOME"
    elif nvcc:
        root, where = _nvcc_root(nvcc), f"nvcc on PATH at {nvcc}"
    else:
        return None, ""
    missing = lacking(root)
    if missing:
        return None, f"the CUDA toolkit at {root} ({where}) lacks {', '.join(missing)}"
    return Toolkit(root, nvcc_version(root / "bin" / "nvcc"), f"{root} ({where})"), ""


def wheels_installed() -> Toolkit | None:
    root = wheels_root()
    if lacking(root):
        return None
    return Toolkit(root, nvcc_version(root / "bin" / "nvcc"), f"PyPI wheels in {root.parent.parent}")


def install_wheels() -> Toolkit:
    """Install the pinned CUDA wheels into the cache folder and give them the layout CMake's
    FindCUDAToolkit and nvcc look for: unversioned .so names to link with, and lib64 (nvcc's
    profile passes -L<root>/lib64)."""
    target = wheels_root().parent.parent
    print(f"gaplab: installing CUDA {CUDA_VERSION} (nvcc, runtime, cuBLAS, CCCL) from PyPI into {target}", flush=True)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                          "--upgrade", "--target", str(target), *WHEELS], capture_output=True, text=True)
    if res.returncode != 0:
        raise SetupError(f"pip could not install the CUDA wheels: {res.stderr.strip().splitlines()[-1:]}")
    root = wheels_root()
    for lib in LIBS:
        link = root / "lib" / f"lib{lib}.so"
        if not link.exists():
            link.symlink_to(next(root.glob(f"lib/lib{lib}.so.*")).name)
    if not (root / "lib64").exists():
        (root / "lib64").symlink_to("lib")
    toolkit = wheels_installed()
    if toolkit is None:
        raise SetupError(f"the CUDA wheels installed into {target} lack {', '.join(lacking(root))}")
    return toolkit


def toolkit() -> Toolkit:
    """The toolkit to build with: one on this machine that can, else the wheels (installed once)."""
    here, why_not = found()
    if here:
        return here
    if why_not:
        print(f"gaplab: {why_not}; using CUDA {CUDA_VERSION} from PyPI instead", flush=True)
    return wheels_installed() or install_wheels()
