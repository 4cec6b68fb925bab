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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gaplab.measure.httpget import get_bytes

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

    @property
    def program(self) -> str:
        """The executable's name: the first item of start's cmd, a list."""
        assert isinstance(self.proc.args, list)
        return Path(self.proc.args[0]).name

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
        assert self.guard.stdin is not None  # start opened it as a pipe
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


def exit_status(pid: int) -> str | None:
    """None while the process runs; else how it ended, in words. Any process can tell, not only
    its parent (a trial runs in a notebook kernel, the server was started by the sweep): an
    unreaped process's exit status is read from /proc (field 52 of its stat); a reaped one is
    just gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "exited"
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3, the state
    if fields[0] not in ("Z", "X"):
        return None
    status = int(fields[49]) if len(fields) > 49 else None
    if status is None:
        return "exited"
    if status & 0x7F:
        return f"was killed by signal {status & 0x7F} ({signal.Signals(status & 0x7F).name})"
    return f"exited with code {status >> 8}"


def first_dead(pids: list[int]) -> str | None:
    """How the first of these processes that is no longer running ended ("process 12 was killed by
    signal 9 (SIGKILL)"); None while all run."""
    for pid in pids:
        status = exit_status(pid)
        if status:
            return f"process {pid} {status}"
    return None


def log_tail(log: str | Path, lines: int = 3) -> str:
    """The last lines of a server's log, joined on one line ('' when there is none)."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[:600]


def wait_healthy(base: str, server: ServerProcess, timeout: float, log: Path, path: str = "/health") -> int:
    """Poll base + path until it answers 200; returns perf_counter_ns at that moment."""
    proc = server.proc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.program} exited with code {proc.returncode}: {log_tail(log)}")
        if get_bytes(base + path, timeout=2) is not None:  # 2xx: loaded and serving
            return time.perf_counter_ns()
        time.sleep(0.05)
    raise RuntimeError(f"{server.program} did not become healthy within {timeout:.0f} s; see {log}")


@contextmanager
def serving(cmd: list[str], log: Path, port: int, timeout: float, env: dict | None = None, path: str = "/health",
            grace: float = STOP_GRACE_S) -> Iterator[tuple[ServerProcess, str, int, int]]:
    """The one way a runtime starts its server: cmd, its output in `log`, listening on 127.0.0.1:port.
    Yields (the process, its root URL, perf_counter_ns at its start, and when root + path first
    answered 200); stopped when the block ends, however it ends (SIGKILL after `grace` seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as logf:
        started = time.perf_counter_ns()
        proc = start(cmd, stdout=logf, stderr=subprocess.STDOUT, **({"env": env} if env is not None else {}))
        try:
            yield proc, base, started, wait_healthy(base, proc, timeout, log, path)
        finally:
            proc.stop(grace)
