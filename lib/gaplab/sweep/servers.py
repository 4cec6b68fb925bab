"""Server sessions: the one way gaplab opens (or attaches to) a cell's server, runs
measurements against it, and names what they store.

A measurement is anything with `run(server)` (measure and store a run) and `fail(error)`
(store that run as failed, when its server never came up). The speed sweep's trials
(rounds.py), the quality runs (quality/runner.py) and anything later hand their
measurements to `ServerPool.serve`; each stored run carries a `records.RunIdentity` built by
`run_identity`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Protocol

from gaplab.machine.hardware import hardware, machine_id
from gaplab.measure.records import RunIdentity
from gaplab.runtimes import Server, open_server
from gaplab.runtimes.process import first_dead
from gaplab.spec.scenario import Cell


class Measurement(Protocol):
    def run(self, server: Server) -> None: ...

    def fail(self, error: str) -> None: ...


def run_identity(cell: Cell, server: Server | None, run_id: str, trial: int = 1, series_id: str = "",
                 **instead) -> RunIdentity:
    """The identity every row of a run against the cell's server carries.

    instead: fields a run of another kind on the same server sets itself (quality's task and
    agreement runs name their own cell_id, cell_key, workload and concurrency)."""
    rt = cell.runtime
    ident = {"run_id": run_id, "cell_id": cell.cell_id, "cell_key": cell.cell_key, "scenario": cell.scenario,
             "hardware_id": hardware()["hardware_id"], "machine_id": machine_id(),
             "series_id": series_id or run_id, "trial": trial, "runtime": rt.name, "runtime_kind": rt.kind,
             "runtime_version": server.runtime_version if server else "unknown", "model": cell.model.name,
             "quant": cell.quant, "workload": cell.workload.name, "concurrency": cell.concurrency,
             "threads": rt.threads if rt.started_here else None,
             "parallel": rt.parallel if rt.started_here else None, "rate": cell.rate,
             "workload_kind": cell.workload.kind}
    unknown = sorted(set(instead) - set(ident))
    if unknown:
        raise TypeError(f"run_identity: {unknown} are not identity fields (records.RunIdentity)")
    return RunIdentity(**{**ident, **instead})


class ServerPool:
    """The servers of one command. Each is started when first needed (one start at a time,
    whatever thread asks), and stopped after each `serve` unless `keep` holds it up until
    `close` (the sweep keeps servers up through its rounds when load.keep_servers).

    A server gaplab started that has died (one of its processes exited) is started again
    before the next measurement, `max_restarts` times at most over the command; the new one
    counts its restarts (Server.restarts, stored with each run) and has its own cold start.
    After that, the measurements of that server fail with the reason."""

    def __init__(self, keep: bool = False, max_restarts: int = 2):
        self.keep, self.max_restarts = keep, max_restarts
        self._open: dict[str, tuple[contextlib.ExitStack, Server]] = {}
        self._starting = threading.Lock()
        self._deaths: dict[str, list[str]] = {}  # server key -> how each of its servers died

    def _get(self, cell: Cell) -> Server:
        key = cell.server_key
        with self._starting:
            if key in self._open:
                dead = self.dead(cell)
                if dead is None:
                    return self._open[key][1]
                self._deaths.setdefault(key, []).append(dead)
                self._stop(key)
            deaths = self._deaths.get(key, [])
            if len(deaths) > self.max_restarts:
                raise RuntimeError(f"the server died {len(deaths)} times (last: {deaths[-1]}); it is not started "
                                   f"again (load.max_restarts = {self.max_restarts})")
            stack = contextlib.ExitStack()
            server = stack.enter_context(open_server(cell))
            server.restarts = len(deaths)
            self._open[key] = (stack, server)
            return server

    def dead(self, cell: Cell) -> str | None:
        """How the cell's open server died ("process 12 was killed by signal 9 (SIGKILL)"); None
        while it runs, or when none is open."""
        entry = self._open.get(cell.server_key)
        return first_dead(entry[1].watch_pids) if entry else None

    def serve(self, cell: Cell, measurements: Iterable[Measurement]) -> bool:
        """Run the measurements against the cell's server, in order, starting it again before a
        measurement when it has died. When it will not start, that measurement and the rest are
        stored as failed with the reason; returns whether every measurement had a server."""
        measurements = list(measurements)
        try:
            for i, m in enumerate(measurements):
                try:
                    server = self._get(cell)
                except Exception as exc:  # the rest fail; the command goes on with other servers
                    error = f"{type(exc).__name__}: {exc}"
                    for rest in measurements[i:]:
                        rest.fail(error)
                    return False
                m.run(server)
        finally:
            if not self.keep:
                self._stop(cell.server_key)
        return True

    def _stop(self, key: str) -> None:
        # not under the start lock: stopping one server must not wait for another's start
        # (vLLM's takes minutes); each key is served by one thread at a time
        entry = self._open.pop(key, None)
        if entry:
            entry[0].close()

    def close(self) -> None:
        for key in list(self._open):
            self._stop(key)

    def __enter__(self) -> ServerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
