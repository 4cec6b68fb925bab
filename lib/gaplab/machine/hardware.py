"""What a run was measured on, at two grains.

- hardware_id names the hardware class (CPU model, cores, memory, GPUs): what comparisons
  group by, and the top folder of the store. Two machines of one kind share it.
- machine_id names the one machine that measured a run: what "already measured here"
  means. It is a random id made once and kept in the gaplab cache (GAPLAB_MACHINE_ID
  overrides it), so a fresh clone on the same machine knows its runs, and another machine
  of the same class measures for itself.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import secrets
import shutil
import subprocess

import psutil

from gaplab.spec.config import CACHE_DIR


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


@functools.cache
def hardware() -> dict:
    mem_gib = round(psutil.virtual_memory().total / 2**30)
    cpu = _cpu_model()
    cores = os.cpu_count() or 1
    gpus = _gpus()
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40]
    digest = hashlib.sha256(f"{cpu}|{cores}|{mem_gib}|{gpus}".encode()).hexdigest()[:6]
    return {
        "hardware_id": f"{slug}-{cores}c-{mem_gib}g-{digest}",
        "cpu_model": cpu,
        "cpu_cores": cores,
        "memory_gib": mem_gib,
        "gpus": gpus,
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
    }


@functools.cache
def machine_id() -> str:
    """This machine's id (see the module docstring); made on first use."""
    if os.environ.get("GAPLAB_MACHINE_ID"):
        return os.environ["GAPLAB_MACHINE_ID"]
    path = CACHE_DIR / "machine-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        made = "m-" + secrets.token_hex(4)
        tmp = path.with_name(f".machine-id.{os.getpid()}")
        tmp.write_text(made + "\n")
        os.replace(tmp, path)
        return path.read_text().strip()
