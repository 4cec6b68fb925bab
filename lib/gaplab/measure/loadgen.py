"""Load drivers.

Closed loop: N users, each sends its next request when the last one ends. Warmup
requests run first, at the same concurrency, and are stored flagged. The measured phase
keeps sending until it has sent at least `min_requests` and run for at least
`min_seconds` (minimums in the spirit of MLPerf LoadGen's), and never sends after
`max_seconds`; a request in flight then gets a grace before it is cut (guard.py, which also
stops a trial whose server died or fails every request).

Open loop: requests arrive on a seeded schedule at a stated rate (constant, Poisson, or
gamma gaps, burstier than Poisson below shape 1, as vLLM's benchmark client offers),
whatever is still in flight. Each record keeps the time it was due (scheduled_ns) beside
the time it went out (sent_ns): a client that falls behind its schedule shows as the gap
between the two instead of silently sending later (coordinated omission).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

from gaplab.measure.client import StreamClient, wait_until
from gaplab.measure.guard import TrialGuard
from gaplab.measure.records import RequestRecord

# payload(record, seq) -> the request body; it may note in the record what the workload asked
# for (target lengths, tag). seq: the user's seq-th request of the phase (multi-turn's turn).
Payload = Callable[[RequestRecord, int], bytes]


async def _send(client: StreamClient, payload: Payload, rec: RequestRecord, seq: int,
                records: list[RequestRecord], on_done: Callable[[RequestRecord], None] | None,
                send_at_ns: int | None = None, guard: TrialGuard | None = None) -> RequestRecord:
    """One request of a load: streamed into rec (written at send_at_ns when given), appended to
    records (also when interrupted: it is still a row; past the guard's bound on error rows, only
    counted), then handed to on_done."""
    keep = True
    try:
        stream = client.stream(payload(rec, seq), rec, send_at_ns)
        if guard is None:
            await stream
        else:
            keep = await guard.send(stream, rec)
    finally:
        if keep:
            records.append(rec)
    if on_done:
        on_done(rec)
    return rec


async def _watched(guard: TrialGuard | None, start_ns: int, load: Awaitable) -> None:
    """Await a phase's load with the guard watching it (its bound, the server's processes)."""
    watcher = asyncio.create_task(guard.watch(start_ns)) if guard else None
    try:
        await load
    finally:
        if watcher:
            watcher.cancel()


async def closed_loop(client: StreamClient, payload: Payload, concurrency: int, warmup: int,
                      min_requests: int, min_seconds: float, max_seconds: float, records: list[RequestRecord],
                      on_done: Callable[[RequestRecord], None] | None = None, part: tuple[int, int] = (0, 1),
                      count: Callable[[int], Iterator[int]] = itertools.count,
                      between: Callable[[], Awaitable[None]] | None = None,
                      guard: TrialGuard | None = None) -> list[RequestRecord]:
    """Run `warmup` flagged requests, then the measured phase; payload(rec, seq) is a request's body.

    Appends every record to `records` (the caller's, so an interrupted run keeps what it
    measured, and a writer can flush it while the load runs), warmup first, in the order
    they finished; returns it.

    A share of a load split across processes (load_processes): part (p, P) runs the users u
    with u % P == p, count(first) gives a phase's request indices from a counter all parts
    share, and between() is awaited before the measured phase (until every part is ready).

    guard (guard.py): bounds each phase at max_seconds and a grace, stops the trial on a dead or
    unhealthy server, and makes a user wait after a failed request.
    """

    async def phase(first: int, users: int, enough: Callable[[int, float], bool], is_warmup: bool) -> None:
        counter = count(first)
        start_ns = time.perf_counter_ns()
        start = time.monotonic()

        async def user(u: int) -> None:
            scheduled = start_ns
            for seq in itertools.count():
                if guard and not guard.sending():
                    return
                i = next(counter)
                if enough(i - first, time.monotonic() - start):
                    return
                rec = await _send(client, payload, RequestRecord(index=i, user=u, warmup=is_warmup,
                                                                 scheduled_ns=scheduled), seq, records, on_done,
                                  guard=guard)
                scheduled = rec.end_ns
                if rec.error is not None and guard and guard.sending():
                    await guard.backoff()
                    scheduled = time.perf_counter_ns()  # the user meant to wait: its next request is due now

        await _watched(guard, start_ns, asyncio.gather(*(user(u) for u in range(part[0], users, part[1]))))

    if warmup:
        await phase(0, min(concurrency, warmup), lambda n, _: n >= warmup, True)
    if between:
        await between()
    await phase(warmup, concurrency,
                lambda n, t: t >= max_seconds or (n >= min_requests and t >= min_seconds), False)
    return records


ARRIVALS = ("poisson", "constant", "gamma")
# an arrival's connection is opened this long before it is due, and the request written on time
CONNECT_AHEAD_NS = 5_000_000


def arrival_offsets(rate: float, n: int, kind: str = "poisson", seed: int | str = 0, shape: float = 1.0) -> list[float]:
    """Seconds from the start at which n requests are due, at `rate` per second on average: equal
    gaps (constant), exponential gaps (poisson), or gamma gaps of the given shape (gamma; shape 1 is
    Poisson, below 1 burstier). The first is due at once."""
    if not rate > 0:
        raise ValueError(f"rate: got {rate:g}; give requests per second above 0")
    if kind not in ARRIVALS:
        raise ValueError(f"arrival: got {kind!r}; allowed: {', '.join(ARRIVALS)}")
    if not shape > 0:
        raise ValueError(f"shape: got {shape:g}; a gamma shape must be above 0 (1 is Poisson, below 1 burstier)")
    rng = random.Random(seed)
    gap = {"constant": lambda: 1 / rate, "poisson": lambda: rng.expovariate(rate),
           "gamma": lambda: rng.gammavariate(shape, 1 / (rate * shape))}[kind]
    out, t = [], 0.0
    for _ in range(n):
        out.append(t)
        t += gap()
    return out


async def open_loop(client: StreamClient, payload: Payload, offsets: list[float],
                    records: list[RequestRecord], on_done: Callable[[RequestRecord], None] | None = None,
                    first_index: int = 0, warmup: bool = False, part: tuple[int, int] = (0, 1),
                    start_ns: int | None = None, guard: TrialGuard | None = None) -> list[RequestRecord]:
    """Send request first_index + k when offsets[k] seconds have passed, however many are in flight
    (no cap: the client never queues). Appends each record to `records` as it finishes; returns it.

    A share of a schedule split across processes (load_processes): part (p, P) sends the arrivals
    k with k % P == p, and start_ns, when given, is the schedule's start (offset 0's due time),
    chosen once for every part. guard: as closed_loop's (no wait after a failed request: arrivals
    keep their schedule)."""

    async def one(k: int, due_ns: int) -> None:
        i = first_index + k  # each arrival is its own user
        await _send(client, payload, RequestRecord(index=i, user=i, warmup=warmup, scheduled_ns=due_ns), 0,
                    records, on_done, send_at_ns=due_ns, guard=guard)

    if start_ns is None:
        start_ns = time.perf_counter_ns() + CONNECT_AHEAD_NS

    async def schedule() -> None:
        tasks = []
        for k in range(part[0], len(offsets), part[1]):
            due_ns = start_ns + int(offsets[k] * 1e9)
            await wait_until(due_ns - CONNECT_AHEAD_NS, guard.halt if guard else None)
            if guard and not guard.sending():
                break
            tasks.append(asyncio.create_task(one(k, due_ns)))
        await asyncio.gather(*tasks)

    await _watched(guard, start_ns - CONNECT_AHEAD_NS, schedule())
    return records


async def one_by_one(client: StreamClient, payload: Payload, n: int, records: list[RequestRecord],
                     on_done: Callable[[RequestRecord], None] | None = None,
                     guard: TrialGuard | None = None) -> list[RequestRecord]:
    """n flagged warmup requests, each sent when the last has ended (before an open-loop trial)."""

    async def run() -> None:
        scheduled = time.perf_counter_ns()
        for i in range(n):
            if guard and not guard.sending():
                return
            rec = await _send(client, payload, RequestRecord(index=i, user=0, warmup=True, scheduled_ns=scheduled),
                              i, records, on_done, guard=guard)
            scheduled = rec.end_ns

    await _watched(guard, time.perf_counter_ns(), run())
    return records


def open_loop_count(rate: float, requests: int, min_seconds: float, max_seconds: float) -> int:
    """How many arrivals an open-loop trial schedules: at least `requests` and min_seconds' worth,
    and no more than max_seconds' worth (but at least one)."""
    return max(1, min(max(requests, math.ceil(rate * min_seconds)), math.floor(rate * max_seconds)))


def run_sync(make_coro, tick: Callable[[], None] | None = None, tick_seconds: float = 2.0):
    """Run a coroutine to completion on a thread with its own event loop, also inside Jupyter
    (whose kernel already runs a loop); this thread calls tick() every tick_seconds meanwhile
    (e.g. to write what has finished), away from the loop that stamps arrivals.

    Ctrl-C (or a kernel interrupt) cancels the requests in flight, which end as rows with
    their error, and is raised again here.

    The cyclic garbage collector is paused meanwhile: a full collection over a trial's chunk
    records stopped the loop for 37-82 ms here, late-stamping every stream's reads and
    sending open-loop arrivals late (bench/open_loop_lag.py). Reference counting still frees
    what is not in a cycle; the collector runs once after.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run_on_thread(make_coro, tick, tick_seconds)
    finally:
        if collecting:
            gc.enable()
            gc.collect()


def _run_on_thread(make_coro, tick: Callable[[], None] | None, tick_seconds: float):
    loop = asyncio.new_event_loop()
    task: list[asyncio.Task] = []
    failure: list[BaseException] = []

    def target() -> None:
        task.append(loop.create_task(make_coro()))
        try:
            loop.run_until_complete(task[0])
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # raised again in the caller's thread
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=target, name="gaplab-load")
    thread.start()
    next_tick = time.monotonic() + tick_seconds
    try:
        while thread.is_alive():
            thread.join(0.1)
            if tick and time.monotonic() >= next_tick:
                tick()
                next_tick = time.monotonic() + tick_seconds
    except KeyboardInterrupt:
        while not task:
            time.sleep(0.01)
        loop.call_soon_threadsafe(task[0].cancel)
        thread.join()
        raise
    if failure:
        raise failure[0]
    return task[0].result() if task and task[0].done() and not task[0].cancelled() else None
