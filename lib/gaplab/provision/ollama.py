"""Ollama: which binary gaplab runs, where the servers it starts keep their models, and the
GGUF files imported into them.

No package registry carries Ollama, so gaplab runs one that is already on the machine:
OLLAMA_BIN when set, else `ollama` on PATH, else the CPU build that this project's shared
tools folder holds beside a checkout (../shared/tools/ollama). The servers gaplab starts keep
their models and HOME under the gaplab cache, never in the user's ~/.ollama, and share them:
a model imported once is found by every later server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from gaplab.measure.httpget import get_json, post_json
from gaplab.provision import SetupError
from gaplab.spec.config import CACHE_DIR, ROOT

OLLAMA_DIR = CACHE_DIR / "ollama"
MODELS_DIR = OLLAMA_DIR / "models"  # OLLAMA_MODELS of every server gaplab starts
HOME_DIR = OLLAMA_DIR / "home"  # its HOME (Ollama writes a key pair to $HOME/.ollama on first start)
IMPORTS = OLLAMA_DIR / "imports.json"  # model name -> the GGUF file's sha256 and Ollama's digest
SHARED_BIN = ROOT.parent / "shared" / "tools" / "ollama" / "bin" / "ollama"
HOW_TO_GET = ("Ollama is not installed: get it from https://ollama.com/download and put 'ollama' on PATH, "
              "or set OLLAMA_BIN to the ollama binary")
# The llama.cpp each known Ollama build runs: its runner does not say ("build 0, commit unknown").
# 0.33.0-rc2 is the shared CPU build (../shared/tools/ollama/README.md).
ENGINES = {"0.33.0-rc2": "llama.cpp b10488 (Ollama's patched runner)"}


def find_binary() -> Path:
    """The ollama binary gaplab runs: OLLAMA_BIN, else PATH, else the shared tools folder."""
    env = os.environ.get("OLLAMA_BIN")
    if env:  # an explicit choice: wrong is an error, not a reason to run another one
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise SetupError(f"OLLAMA_BIN: {env} is not an executable file; point it at the ollama binary")
        return Path(env)
    found = shutil.which("ollama") or (str(SHARED_BIN) if os.access(SHARED_BIN, os.X_OK) else None)
    if not found:
        raise SetupError(HOW_TO_GET)
    return Path(found)


def binary_version(binary: Path) -> str:
    """The binary's own version; it is asked with OLLAMA_HOST on a closed port, so that a server
    already running on the default port cannot answer for it."""
    from gaplab.runtimes.process import free_port

    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{free_port()}"}
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=env, timeout=30)
    m = re.search(r"version is (\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def engine(version: str) -> str:
    return ENGINES.get(version, f"unknown (Ollama {version} does not say which llama.cpp it runs)")


def _imports() -> dict:
    return json.loads(IMPORTS.read_text()) if IMPORTS.exists() else {}


def _record(name: str, sha256: str, digest: str) -> None:
    records = {**_imports(), name: {"sha256": sha256, "digest": digest}}
    IMPORTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = IMPORTS.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(IMPORTS)  # atomic: servers started at once may record at once


def digest_of(base: str, name: str) -> str | None:
    """Ollama's digest of a model it has, from /api/tags; None when it does not have it."""
    tags = get_json(base + "/api/tags") or {}
    return next((m.get("digest") for m in tags.get("models", []) if m.get("name") == name), None)


def import_gguf(binary: Path, base: str, env: dict, name: str, gguf: Path, sha256: str,
                timeout: float = 600) -> tuple[str, bool]:
    """Make `name` in the Ollama server at base from the GGUF file (`ollama create`, which
    copies it into the server's blob store); skipped when the server already has `name` with
    the digest recorded for this very file. Returns Ollama's digest and whether it imported."""
    from gaplab.runtimes import process

    done = _imports().get(name, {})
    have = digest_of(base, name)
    if have and done.get("sha256") == sha256 and done.get("digest") == have:
        return have, False
    with tempfile.TemporaryDirectory() as tmp:
        modelfile = Path(tmp) / "Modelfile"
        modelfile.write_text(f"FROM {gguf.resolve()}\n")
        log = Path(tmp) / "create.log"
        with open(log, "wb") as logf:  # a process group of its own, like the server: nothing outlives gaplab
            proc = process.start([str(binary), "create", name, "-f", str(modelfile)], stdout=logf,
                                 stderr=subprocess.STDOUT, env=env)
            try:
                code = proc.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                proc.stop()
        if code != 0:
            tail = [s for s in log.read_text(errors="replace").splitlines() if s.strip()][-1:]
            raise SetupError(f"ollama create {name} from {gguf} failed: {' '.join(tail) or f'exit code {code}'}")
    digest = digest_of(base, name)
    if not digest:
        raise SetupError(f"ollama create {name} reported success but the server does not list it")
    _record(name, sha256, digest)
    return digest, True


def with_options(base: str, name: str, options: dict, renew: bool = False) -> str:
    """A model of the server at base that is `name` with these options as its defaults, made once
    (no copy: it shares name's weights) and again when `name` was just imported anew. Requests
    through Ollama's OpenAI-compatible /v1 cannot carry options, and a request without them
    restarts the runner with Ollama's defaults."""
    derived = name + "".join(f"-{k.removeprefix('num_')}{v}" for k, v in sorted(options.items()))
    if not renew and digest_of(base, derived):
        return derived
    if post_json(base + "/api/create", {"model": derived, "from": name, "parameters": options, "stream": False}) is None:
        raise SetupError(f"Ollama at {base} could not make {derived} from {name}")
    return derived
