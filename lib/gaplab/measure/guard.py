"""When a trial's load stops before its own rules say (loadgen.py), and what it keeps.

- **Its bound.** No phase sends after `max_seconds`; the requests still in flight then get a
  grace (`load.grace_seconds`; by default twice the median latency of the trial's requests
  that ended, at least 1 s, or 10 s when none has), after which they are cancelled and stored
  as "cut at trial end". One endless or very slow request cannot hold the trial, or the
  sweep, for `request_timeout`.
- **A dead server.** The processes of a server gaplab started are checked after every failed
  request and every POLL_S: when one has exited, the trial stops at once (nothing more is
  sent, what is in flight is cut) and fails with how it ended and the end of the server's log.
- **An unhealthy server.** `load.stop_after_errors` failed requests in a row, or more than
  half of the requests that ended in the last WINDOW_S seconds (at least WINDOW_MIN of them),
  stop the trial the same way: failed, with the rule and the last error.
- **No flood.** After a failed request a closed-loop user waits the trial's median latency
  so far (at least MIN_BACKOFF_S) before its next one. A user stands for a client that holds
  a request for about that long: resending at once would offer the server hundreds of
  requests a second per user, a load the configuration never asked for. Open-loop arrivals
  keep their schedule. A trial stores at most MAX_ERROR_ROWS failed requests; the rest are
  counted (`dropped_errors`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import time
from dataclasses import dataclass, field

from gaplab.measure.records import RequestRecord
from gaplab.runtimes.process import first_dead, log_tail

POLL_S = 0.2  # how often the server's processes and the trial's bound are checked
WINDOW_S, WINDOW_MIN = 5.0, 10  # the error-rate rule's window, and how many requests it needs
MIN_BACKOFF_S = 0.01
NO_LATENCY_GRACE_S = 10.0  # the grace when no request of the trial has ended yet
MAX_ERROR_ROWS = 1000
CUT_AT_END = "cut at trial end"
CUT_STOPPED = "cut when the trial stopped"


class TrialStopped(RuntimeError):
    """The trial was stopped as failed (a dead or unhealthy server); its rows are stored."""


@dataclass(frozen=True)
class Rules:
    """What a guard watches, as a client process can be handed it."""

    max_seconds: float
    grace_seconds: float | None = None
    stop_after_errors: int = 20
    pids: tuple[int, ...] = ()  # the server's processes (empty: one gaplab did not start)
    log: str = ""  # the server's log, quoted when it dies


@dataclass
class TrialGuard:
    """One trial's watch (in one event loop). The load asks `sending()` before each request and
    hands every request to `track`; `watch(start)` runs beside each phase."""

    rules: Rules
    failure: str | None = None  # why the trial stopped as failed
    dropped_errors: int = 0  # failed requests not stored, past MAX_ERROR_ROWS
    cut: int = 0  # requests cut at a phase's end or when the trial stopped
    _latencies: list[float] = field(default_factory=list)
    _ended: collections.deque = field(default_factory=collections.deque)  # (end time, failed) in the window
    _in_row: int = 0
    _errors: int = 0
    _inflight: set = field(default_factory=set)
    _cutting: str | None = None  # the error given to requests cancelled now
    _phase_over: bool = False
    halt: asyncio.Event = field(default_factory=asyncio.Event)  # set when the trial stops as failed

    def sending(self) -> bool:
        return self.failure is None and not self._phase_over

    async def send(self, stream, rec: RequestRecord) -> bool:
        """Await stream (the client filling rec) as a request this guard may cut; then count rec.
        Returns whether rec is to be stored."""
        task = asyncio.current_task()
        assert task is not None  # a coroutine runs in a task
        self._inflight.add(task)
        try:
            await stream
        except asyncio.CancelledError:
            if self._cutting is None:  # not ours: Ctrl-C, or the caller's cancel
                raise
            task.uncancel()
            rec.fail(self._cutting, self._cutting)
            self.cut += 1
            return True
        finally:
            self._inflight.discard(task)
        return self._count(rec)

    def _count(self, rec: RequestRecord) -> bool:
        now = time.monotonic()
        failed = rec.error is not None
        self._ended.append((now, failed))
        while self._ended and self._ended[0][0] < now - WINDOW_S:
            self._ended.popleft()
        if rec.error is None:
            self._in_row = 0
            self._latencies.append((rec.end_ns - rec.sent_ns) / 1e9)
            return True
        self._in_row += 1
        self._errors += 1
        self._check_server()
        bad = sum(f for _, f in self._ended)
        if self._in_row >= self.rules.stop_after_errors:
            self.stop(f"the server looks unhealthy: {self._in_row} failed requests in a row "
                      f"(load.stop_after_errors); the last: {rec.error[:200]}")
        elif len(self._ended) >= WINDOW_MIN and bad * 2 > len(self._ended):
            self.stop(f"the server looks unhealthy: {bad} of the {len(self._ended)} requests that ended in the last "
                      f"{WINDOW_S:g} s failed; the last: {rec.error[:200]}")
        if self._errors > MAX_ERROR_ROWS:
            self.dropped_errors += 1
            return False
        return True

    def median_latency(self) -> float | None:
        return statistics.median(self._latencies) if self._latencies else None

    async def backoff(self) -> None:
        """A closed-loop user's wait after a failed request (see the module's docstring), cut short
        when the trial stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.halt.wait(), max(self.median_latency() or 0.0, MIN_BACKOFF_S))

    def grace(self) -> float:
        if self.rules.grace_seconds is not None:
            return self.rules.grace_seconds
        median = self.median_latency()
        return NO_LATENCY_GRACE_S if median is None else max(2 * median, 1.0)

    def stop(self, failure: str) -> None:
        """Stop the trial as failed: nothing more is sent, what is in flight is cut."""
        if self.failure is None:
            self.failure = failure
            self.halt.set()
            self._cut_all(CUT_STOPPED)

    def _cut_all(self, error: str) -> None:
        self._cutting = error
        for task in list(self._inflight):
            task.cancel()

    def _check_server(self) -> None:
        dead = first_dead(list(self.rules.pids)) if self.rules.pids else None
        if dead:
            tail = log_tail(self.rules.log) if self.rules.log else ""
            self.stop(f"the server died: {dead}" + (f"; its log ends: {tail}" if tail else ""))

    def watch(self, start_ns: int):
        """A phase starts at start_ns (it may send again); returns what watches it, to run beside it
        and cancel when it ends: the server's processes every POLL_S; at max_seconds, no more
        sends; after the grace, the requests still in flight are cut."""
        self._phase_over, self._cutting = False, None
        return self._watch(start_ns)

    async def _watch(self, start_ns: int) -> None:
        end_ns = start_ns + int(self.rules.max_seconds * 1e9)
        cut_ns = None
        while True:
            await asyncio.sleep(POLL_S)
            self._check_server()
            now = time.perf_counter_ns()
            if cut_ns is None and now >= end_ns:
                self._phase_over = True
                cut_ns = now + int(self.grace() * 1e9)
            if cut_ns is not None and now >= cut_ns and self._inflight:
                self._cut_all(CUT_AT_END)

    def summary(self) -> dict:
        """What the run's metadata keeps of this watch."""
        return {"cut_requests": self.cut, "dropped_errors": self.dropped_errors, "stopped": self.failure}
