"""The CUDA llama-server that `gaplab local setup --runtime llamacpp --device cuda` builds, checked
on a machine without a GPU: it links CUDA's runtime and cuBLAS from the toolkit that built it, it
carries GPU code, and its CUDA backend is compiled in and starts (finding no device). The build
takes tens of minutes on two cores, so the test does not make it: it skips, with the command."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from gaplab.machine.hardware import hardware
from gaplab.provision import llama_build

BUILD = llama_build.cuda_name()
SERVER = llama_build.tool_path("llama-server", BUILD)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not llama_build.llama_built(BUILD),
    reason=f"the {BUILD} build is not in the cache: build it with "
           "'.venv/bin/gaplab local setup --runtime llamacpp --device cuda'")]


def _linked() -> dict[str, str]:
    """ldd's answer: each shared library the server needs -> where the loader finds it."""
    out = subprocess.run(["ldd", str(SERVER)], capture_output=True, text=True, check=True).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*(\S+) => (.+?)(?: \(0x[0-9a-f]+\))?$", out, re.M)}


def test_it_links_cudart_and_cublas_from_the_toolkit_that_built_it():
    toolkit = Path(json.loads((SERVER.parent.parent / "gaplab-stamp.json").read_text())["toolkit"])
    linked = _linked()
    for lib in ("libcudart.so", "libcublas.so", "libcublasLt.so"):
        name = next((n for n in linked if n.startswith(lib + ".")), None)
        assert name, f"{SERVER.name} does not link {lib}: {sorted(linked)}"
        assert toolkit.resolve() in Path(linked[name]).resolve().parents, (name, linked[name], toolkit)
    assert not any(n.startswith("libcuda.so") for n in linked)  # the driver comes at run time, on a GPU box


def test_it_carries_gpu_code_for_its_architecture():
    sections = subprocess.run(["readelf", "-SW", str(SERVER)], capture_output=True, text=True, check=True).stdout
    found = re.search(r"\.nv_fatbin\s+PROGBITS\s+\S+\s+(\S+)\s+(\S+)", sections)
    assert found, "no .nv_fatbin section: no CUDA kernels in the binary"
    offset, size = int(found.group(1), 16), int(found.group(2), 16)
    assert size > 10 * 2**20  # ggml-cuda's kernels for one architecture: tens of MB
    with open(SERVER, "rb") as f:
        f.seek(offset)
        fatbin = f.read(size)
    arch = BUILD.removeprefix("cuda")
    # each kernel image in the fat binary names the architecture ptxas compiled it for
    assert f"-arch sm_{arch} ".encode() in fatbin
    assert not re.search(rb"-arch sm_(?!" + arch.encode() + rb" )\d+", fatbin)  # and no other


@pytest.mark.skipif(bool(hardware()["gpus"]), reason="a GPU is here: the backend would find it")
def test_its_cuda_backend_starts_and_finds_no_device_here():
    res = subprocess.run([str(SERVER), "--list-devices"], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    # ggml-cuda's own line when the CUDA runtime it linked finds no driver or device: the backend is in
    assert "ggml_cuda_init: failed to initialize CUDA:" in out, out
    assert "CUDA0" not in out
