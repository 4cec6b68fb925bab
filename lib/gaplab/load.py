"""Load drivers. Closed loop: N users, each sends its next request when the last one ends.

Warmup requests run first, at the same concurrency, and are stored flagged. The
measured phase keeps sending until it has sent at least `min_requests` and run for
at least `min_seconds` (minimums in the spirit of MLPerf LoadGen's), and never sends
after `max_seconds`; a request in flight finishes (or times out).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable

from gaplab.client import StreamClient
from gaplab.records import RequestRecord


async def closed_loop(client: StreamClient, payload: Callable[[int], bytes], concurrency: int, warmup: int,
                      min_requests: int, min_seconds: float, max_seconds: float, records: list[RequestRecord],
                      on_done: Callable[[RequestRecord], None] | None = None) -> list[RequestRecord]:
    """Run `warmup` flagged requests, then the measured phase; payload(i) is request i's body.

    Appends every record to `records` (the caller's, so an interrupted run keeps what it
    measured, and a writer can flush it while the load runs), warmup first, in the order
    they finished; returns it.
    """

    async def phase(first: int, users: int, enough: Callable[[int, float], bool], is_warmup: bool) -> None:
        counter = itertools.count(first)
        start_ns = time.perf_counter_ns()
        start = time.monotonic()

        async def user(u: int) -> None:
            scheduled = start_ns
            while True:
                i = next(counter)
                if enough(i - first, time.monotonic() - start):
                    return
                rec = RequestRecord(index=i, user=u, warmup=is_warmup, scheduled_ns=scheduled)
                try:
                    await client.stream(payload(i), rec)
                finally:  # an interrupted request is still a row
                    records.append(rec)
                if on_done:
                    on_done(rec)
                scheduled = rec.end_ns

        await asyncio.gather(*(user(u) for u in range(users)))

    if warmup:
        await phase(0, min(concurrency, warmup), lambda n, _: n >= warmup, True)
    await phase(warmup, concurrency,
                lambda n, t: t >= max_seconds or (n >= min_requests and t >= min_seconds), False)
    return records


def run_sync(make_coro, tick: Callable[[], None] | None = None, tick_seconds: float = 2.0):
    """Run a coroutine to completion on a thread with its own event loop, also inside Jupyter
    (whose kernel already runs a loop); this thread calls tick() every tick_seconds meanwhile
    (e.g. to write what has finished), away from the loop that stamps arrivals.

    Ctrl-C (or a kernel interrupt) cancels the requests in flight, which end as rows with
    their error, and is raised again here.
    """
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
