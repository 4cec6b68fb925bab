"""Servers gaplab starts never outlive it: the whole process group goes, forked children
included, on a normal stop, after SIGTERM is ignored, and when gaplab itself is SIGKILLed."""

import os
import signal
import subprocess
import sys
import time

from gaplab.runtimes import process

# A "server" that forks two children and ignores SIGTERM, like a busy llama-server or vLLM's engine.
FORKING = ["sh", "-c", "trap '' TERM; sleep 300 & sleep 300 & echo up; wait"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _gone_within(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return True
        time.sleep(0.05)
    return False


def test_stop_kills_the_group_after_the_grace_when_sigterm_is_ignored():
    server = process.start(FORKING, stdout=subprocess.PIPE, text=True)
    assert server.proc.stdout.readline().strip() == "up"
    t0 = time.monotonic()
    server.stop(grace=0.5)
    assert time.monotonic() - t0 < 5
    assert _gone_within(server.pid, 5)
    assert server.guard.returncode == 0


def test_the_group_dies_when_its_starter_is_killed():
    starter = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from gaplab.runtimes import process\n"
         f"s = process.start({FORKING!r}, stdout=sys.stdout)\n"
         "print(s.pid, flush=True)\ntime.sleep(300)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pgid = None
    try:
        lines = sorted(starter.stdout.readline().strip() for _ in range(2))  # the pid and the server's "up"
        pgid = int(lines[0])
        assert lines[1] == "up" and _group_alive(pgid)
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        assert _gone_within(pgid, 5), "the server's children outlived a SIGKILLed gaplab"
    finally:
        starter.kill()
        if pgid and _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)


def test_ctrl_c_in_the_terminal_reaches_neither_server_nor_guard():
    """The terminal signals its foreground process group; gaplab stops its servers itself."""
    server = process.start(["sleep", "30"])
    try:
        assert os.getpgid(server.pid) != os.getpgrp() and os.getpgid(server.guard.pid) != os.getpgrp()
    finally:
        server.stop()
