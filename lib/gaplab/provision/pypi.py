"""One pinned distribution from PyPI, downloaded once into a cache folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gaplab.provision import SetupError


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
    if sdist:  # the source of this distribution only: its build requirements may come as wheels
        cmd[5:5] = ["--no-binary", name]
    print(f"gaplab: downloading {spec} from PyPI", flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SetupError(f"pip could not download {spec}: {res.stderr.strip().splitlines()[-1:]}")
    found = cached()
    if not found:
        raise SetupError(f"pip reported success but no file for {spec} is in {dest}")
    return found[0]
