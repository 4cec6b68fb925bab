"""Server processes that gaplab starts: on a free loopback port, in a process group of their
own that never outlives gaplab, stopped with a short grace.

PR_SET_PDEATHSIG reaches only the first process, and a server may fork (vLLM starts an
engine process and workers, which were seen to keep two cores busy after a killed sweep).
So each server gets a guard: a tiny process that holds a pipe from gaplab and kills the
server's whole group when the pipe closes, which the kernel does however gaplab ends,
SIGKILL included. A llama-server busy generating was seen to ignore SIGTERM for 15 s,
so SIGKILL follows the grace.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gaplab.httpget import get_bytes

STOP_GRACE_S = 3.0

# The guard waits for end of file on stdin. It runs in a session of its own, so Ctrl-C in
# gaplab's terminal does not reach it (gaplab stops its servers itself then).
GUARD = """import os, signal, sys
sys.stdin.buffer.read()
try:
    os.killpg(int(sys.argv[1]), signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    guard: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM to the group, SIGKILL to whatever is left after `grace` seconds."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self._signal(signal.SIGKILL)  # forked children outlive a leader that exited
        self.proc.wait()
        self.guard.stdin.close()
        self.guard.wait()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


def start(cmd: list[str], **popen) -> ServerProcess:
    """Start cmd in a new process group, guarded; popen: stdout, stderr, env, text, ..."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent, **popen)
    guard = subprocess.Popen([sys.executable, "-c", GUARD, str(proc.pid)], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return ServerProcess(proc, guard)


def wait_healthy(base: str, server: ServerProcess, timeout: float, log: Path, path: str = "/health") -> int:
    """Poll base + path until it answers 200; returns perf_counter_ns at that moment."""
    proc = server.proc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{Path(proc.args[0]).name} exited with code {proc.returncode}: {' | '.join(tail)}")
        if get_bytes(base + path, timeout=2) is not None:  # 2xx: loaded and serving
            return time.perf_counter_ns()
        time.sleep(0.05)
    raise RuntimeError(f"{Path(proc.args[0]).name} did not become healthy within {timeout:.0f} s; see {log}")
