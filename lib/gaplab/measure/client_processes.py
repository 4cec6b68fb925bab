"""One trial's load split across client processes (load.processes), for when one core cannot
read every stream: each process runs its share with its own event loop and StreamClient, and
the parent merges their records into the trial's one list, stored as one run.

Every process stamps with time.perf_counter_ns (CLOCK_MONOTONIC on Linux, one clock for every
process on a machine), so the records compare as if one process had measured them.

How the trial is split, so that a load means what it means in one process:
- Closed loop: process p of P runs the users u with u % P == p. Request indices come from one
  counter in shared memory, so they run 0, 1, ... over the trial as in one process, and the
  stop rules count the whole trial: the warmup sends `warmup` requests in all, and the measured
  phase stops sending once the trial has started min_requests and run min_seconds, or has run
  max_seconds. Each phase starts at one time for every process (chosen by the parent once all
  are ready, and the measured phase once every warmup has ended), and each process times it
  from there.
- Open loop: process p sends the arrivals k with k % P == p. The parent chooses the schedule's
  start once, so every arrival keeps its due time; the warmup (one by one) runs in process 0.
A load gets no more processes than it has users (or arrivals).

Processes are spawned (a fresh interpreter): fork is unsafe beside the parent's threads (the
load thread, telemetry) and a Jupyter kernel's event loop. Finished records reach the parent
every SEND_SECONDS through a queue it drains, so the run's part files keep them if the trial is
killed. Children ignore Ctrl-C: the parent stops them (their requests in flight end as
"cancelled" rows, kept) and raises it again. A child that fails stops the others and is
raised in the parent as ClientProcessError, with the records that had finished.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from gaplab.measure.client import ClientArgs, StreamClient, wait_until
from gaplab.measure.guard import Rules, TrialGuard, TrialStopped
from gaplab.measure.loadgen import CONNECT_AHEAD_NS, Payload, closed_loop, one_by_one, open_loop, run_sync
from gaplab.measure.prompts import request
from gaplab.measure.records import RequestRecord
from gaplab.spec.workloads import WorkloadSpec

SEND_SECONDS = 0.25  # a child hands its finished records to the parent this often
POLL_SECONDS = 0.005  # a child waiting for a phase to start checks this often
DRAIN_SECONDS = 0.02  # the parent takes its children's messages this often
WATCH_SECONDS = 0.05  # a child checks this often whether the parent stopped it, or is gone
LEAD_NS = 50_000_000  # a phase starts this long after the parent starts it: every child, polling, is ready
STOP_SECONDS = 10.0  # a child still running this long after it was stopped is terminated
PHASES = ("ready", "warm", "done")  # what a child reports: set up, warmup ended, share ended


class ClientProcessError(RuntimeError):
    """A client process failed, or ended before its share of the trial did."""


@dataclass(frozen=True)
class Requests:
    """The bodies of a trial: workload.request for each record, for the served model. A class,
    not a closure, so that a spawned client process can be handed it."""

    workload: WorkloadSpec
    seed: int
    salt: str
    model: str
    extra_body: dict

    def payload(self, client: StreamClient) -> Payload:
        def payload(rec: RequestRecord, seq: int) -> bytes:
            req = request(self.workload, self.seed, self.salt, rec.index, rec.user, seq)
            rec.target_prompt_tokens, rec.target_output_tokens, rec.tag = req.prompt_tokens, req.output_tokens, req.tag
            return client.body(req.prompt, req.output_tokens, self.model, self.extra_body)
        return payload


@dataclass(frozen=True)
class Job:
    """One trial's load, as every client process gets it. client: StreamClient's arguments;
    requests: anything picklable with payload(client). Closed loop: `concurrency` users and the
    stop rules; open loop: `offsets`, seconds from the schedule's start."""

    client: ClientArgs
    requests: Requests
    warmup: int
    concurrency: int | None = None
    min_requests: int = 1
    min_seconds: float = 0.0
    max_seconds: float = 0.0
    offsets: list[float] | None = None
    rules: Rules | None = None  # each process's guard (guard.py): one that stops the trial stops them all

    def parts(self, processes: int) -> int:
        """How many processes get a share: no more than the load has users (or arrivals)."""
        users = self.concurrency if self.offsets is None else len(self.offsets)
        assert users is not None  # a closed loop has its users
        return max(1, min(processes, users))


class _Started:
    """A phase's request indices over every process: first + how many the phase has started, a
    number in shared memory (the parent zeroes it before each phase)."""

    def __init__(self, started, first: int):
        self.started, self.first = started, first

    def __iter__(self) -> "_Started":
        return self

    def __next__(self) -> int:
        with self.started.get_lock():
            n = self.started.value
            self.started.value = n + 1
        return self.first + n


async def drive_processes(job: Job, processes: int, records: list[RequestRecord],
                          on_done: Callable[[RequestRecord], None] | None = None,
                          guard: TrialGuard | None = None) -> list[RequestRecord]:
    """Run the job's load in job.parts(processes) client processes. Appends their records to
    `records` as they arrive (every SEND_SECONDS, in each process's order of finishing); returns it.
    guard: takes the processes' counts of cut and unstored requests, and the reason one of them
    stopped the trial (the others are then stopped)."""
    ctx = multiprocessing.get_context("spawn")
    inbox = ctx.Queue()
    go = (ctx.Event(), ctx.Event())  # the warmup starts; the measured phase starts
    stop = ctx.Event()
    start_ns = ctx.Value("q", 0, lock=False)  # when the phase just started begins; written before its go
    started = ctx.Value("q", 0)
    n = job.parts(processes)
    procs = [ctx.Process(target=_child, args=(job, (p, n), inbox, go, stop, start_ns, started, os.getpid()),
                         name=f"gaplab-client-{p}", daemon=True) for p in range(n)]
    children = _Children(procs, inbox, records, on_done, guard)
    try:
        for proc in procs:
            proc.start()
        await children.reach("ready")
        start_ns.value = time.perf_counter_ns() + LEAD_NS
        go[0].set()
        await children.reach("warm")
        started.value = 0
        start_ns.value = time.perf_counter_ns() + LEAD_NS
        go[1].set()
        await children.reach("done")
    except TrialStopped:
        pass  # the guard holds the reason; the caller stores the trial as failed
    finally:  # also after a failed child or Ctrl-C (run_sync cancels this task): stop the rest, keep their records
        stop.set()
        await children.end()
    return records


class _Children:
    """The parent's view of its client processes: what each has reported, what failed."""

    def __init__(self, procs: list, inbox, records: list[RequestRecord],
                 on_done: Callable[[RequestRecord], None] | None, guard: TrialGuard | None = None):
        self.procs, self.inbox, self.records, self.on_done, self.guard = procs, inbox, records, on_done, guard
        self.reached = [-1] * len(procs)  # index into PHASES
        self.failed: dict[int, str] = {}

    def poll(self) -> None:
        """Take every message waiting. A process that exited has handed over all it sent (the
        queue is flushed at exit), so one that ended before its "done" did not end well."""
        ended = [p for p, proc in enumerate(self.procs) if proc.exitcode is not None]
        while True:
            try:
                kind, p, body = self.inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "record":
                self.records.append(body)
                if self.on_done:
                    self.on_done(body)
            elif kind == "failed":
                self.failed.setdefault(p, f"client process {p} failed: {body}")
            elif kind == "guard":  # its guard's counts, and why it stopped the trial, if it did
                if self.guard:
                    self.guard.cut += body["cut_requests"]
                    self.guard.dropped_errors += body["dropped_errors"]
                    if body["stopped"] and self.guard.failure is None:
                        self.guard.failure = body["stopped"]
            else:
                self.reached[p] = PHASES.index(kind)
        for p in ended:
            if self.reached[p] < len(PHASES) - 1:
                self.failed.setdefault(p, f"client process {p} ended (exit code {self.procs[p].exitcode}) "
                                          "before its share of the trial did")

    async def reach(self, phase: str) -> None:
        """Wait until every process has reported `phase`; raise the first failure."""
        want = PHASES.index(phase)
        while True:
            self.poll()
            if self.guard and self.guard.failure:  # a process stopped the trial: drive_processes stops the rest
                raise TrialStopped(self.guard.failure)
            if self.failed:
                raise ClientProcessError(next(iter(self.failed.values())))
            if min(self.reached) >= want:
                return
            await asyncio.sleep(DRAIN_SECONDS)

    async def end(self) -> None:
        """Wait for every process to exit, taking what they send; terminate any that will not."""
        deadline = time.monotonic() + STOP_SECONDS
        while any(proc.is_alive() for proc in self.procs) and time.monotonic() < deadline:
            self.poll()
            await asyncio.sleep(DRAIN_SECONDS)
        self.poll()
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
            if proc.pid is not None:  # started
                proc.join(1)


def _child(job: Job, part: tuple[int, int], inbox, go, stop, start_ns, started, parent: int) -> None:
    """A client process: its share of the load on an event loop of its own (run_sync, so the
    collector is paused as in one process), handing finished records to the parent meanwhile."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its children and keeps their records
    records: list[RequestRecord] = []
    sent = 0

    def send() -> None:  # one record a message: the queue pickles each on its own thread, and one
        nonlocal sent    # pickle holds the loop (its stamps) no longer than one record takes
        for rec in records[sent:]:
            inbox.put(("record", part[0], rec))
            sent += 1

    guard = TrialGuard(job.rules) if job.rules else None
    try:
        run_sync(lambda: _share(job, part, records, inbox, go, stop, start_ns, started, parent, guard),
                 tick=send, tick_seconds=SEND_SECONDS)
        send()
        if guard:
            inbox.put(("guard", part[0], guard.summary()))
        inbox.put(("done", part[0], None))
    except BaseException as exc:  # the parent raises it
        send()
        if guard:
            inbox.put(("guard", part[0], guard.summary()))
        inbox.put(("failed", part[0], f"{type(exc).__name__}: {exc}"[:500]))
    if os.getppid() != parent:  # nobody reads the queue: do not wait at exit to hand it over
        inbox.cancel_join_thread()


async def _share(job: Job, part: tuple[int, int], records: list[RequestRecord], inbox, go, stop, start_ns,
                 started, parent: int, guard: TrialGuard | None) -> None:
    task = asyncio.current_task()
    assert task is not None  # a coroutine runs in a task

    async def watch() -> None:  # a stop from the parent, or its death, cancels the share
        while not stop.is_set() and os.getppid() == parent:
            await asyncio.sleep(WATCH_SECONDS)
        task.cancel()

    async def begin(phase: int) -> None:
        while not go[phase].is_set():
            await asyncio.sleep(POLL_SECONDS)
        await wait_until(start_ns.value)

    async def measured() -> None:
        inbox.put(("warm", part[0], None))
        await begin(1)

    watcher = asyncio.create_task(watch())
    try:
        async with StreamClient(**job.client) as client:
            payload = job.requests.payload(client)
            inbox.put(("ready", part[0], None))
            await begin(0)
            if job.offsets is None:
                assert job.concurrency is not None  # a closed loop has its users
                await closed_loop(client, payload, job.concurrency, job.warmup, job.min_requests, job.min_seconds,
                                  job.max_seconds, records, part=part, count=lambda first: _Started(started, first),
                                  between=measured, guard=guard)
            else:
                if part[0] == 0:
                    await one_by_one(client, payload, job.warmup, records, guard=guard)
                await measured()
                # as in one process: the first arrival is due once its connection has been opened ahead
                await open_loop(client, payload, job.offsets, records, first_index=job.warmup, part=part,
                                start_ns=start_ns.value + CONNECT_AHEAD_NS, guard=guard)
    finally:
        watcher.cancel()
