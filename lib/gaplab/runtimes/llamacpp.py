"""llama.cpp's llama-server, started by gaplab on a free loopback port.

The server is always stopped: on return, on errors, on Ctrl-C, and (through
PR_SET_PDEATHSIG) when the process that started it dies. A llama-server busy
generating was seen to ignore SIGTERM for 15 s, so SIGKILL follows a short grace.
"""

from __future__ import annotations

import ctypes
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gaplab import local
from gaplab.config import BUILD_DIR
from gaplab.runtimes import Server

STOP_GRACE_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def server_command(runtime, model_file: Path, port: int) -> list[str]:
    cmd = [str(local.tool_path("llama-server")), "-m", str(model_file), "--host", "127.0.0.1",
           "--port", str(port), "-np", str(runtime.parallel), "-c", str(runtime.ctx_size),
           "-t", str(runtime.threads), "--metrics", "--no-webui"]
    if runtime.kv_unified:
        cmd.append("-kvu")  # slots share the whole context instead of ctx_size / parallel each
    return cmd + list(runtime.extra_args)


def stop_process(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float, log: Path) -> int:
    """Poll /health until it answers 200; returns perf_counter_ns at that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{Path(proc.args[0]).name} exited with code {proc.returncode}: {' | '.join(tail)}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return time.perf_counter_ns()
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{Path(proc.args[0]).name} did not become healthy within {timeout:.0f} s; see {log}")


@contextmanager
def llama_server(runtime, model: str, quant: str, timeout: float = 180) -> Iterator[Server]:
    model_file = local.model_path(model, quant)
    info = local.model_info(model, quant)
    if not local.llama_built():
        raise RuntimeError("llama-server is not built: run 'gaplab local setup'")
    port = free_port()
    cmd = server_command(runtime, model_file, port) + ["-a", model]
    log = BUILD_DIR / "logs" / f"llama-server-{runtime.name}-{model}-{quant}-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as logf:
        started = time.perf_counter_ns()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
        try:
            healthy = wait_healthy(base, proc, timeout, log)
            yield Server(base_url=base + "/v1", served_model=model, runtime_version=local.llama_version(),
                         launch_command=shlex.join(cmd), extra_body={"ignore_eos": True, **runtime.extra_body},
                         model_file=model_file.name, model_sha256=info["sha256"], model_note=info["note"],
                         pid=proc.pid, started_ns=started, healthy_ns=healthy, metrics_url=base + "/metrics",
                         slots_url=base + "/slots")
        finally:
            stop_process(proc)
