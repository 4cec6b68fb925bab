"""What machine a run measured on: facts stored with every run, and a short stable id."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess

import psutil


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
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
