"""Load drivers. Closed loop: N users, each sends its next request when the last one ends.

Warmup requests run first, at the same concurrency, and are stored flagged. The
measured phase is bounded by a request count and by a wall-clock limit; a request
is never scheduled after the limit, and one in flight finishes (or times out).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable

from gaplab.client import RequestRecord, StreamClient


async def closed_loop(client: StreamClient, payloads: list[bytes], concurrency: int,
                      warmup: int, max_seconds: float, records: list[RequestRecord],
                      on_done: Callable[[RequestRecord], None] | None = None) -> list[RequestRecord]:
    """Run len(payloads) - warmup measured requests after `warmup` flagged ones.

    Appends every record to `records` (the caller's, so an interrupted run keeps what it
    measured), warmup first, in the order they finished; returns it.
    """

    async def phase(indices: range, is_warmup: bool, deadline: float | None) -> None:
        counter = itertools.count(indices.start)
        start = time.perf_counter_ns()

        async def user(u: int) -> None:
            scheduled = start
            while True:
                i = next(counter)
                if i >= indices.stop or (deadline is not None and time.monotonic() >= deadline):
                    return
                rec = RequestRecord(index=i, user=u, warmup=is_warmup, scheduled_ns=scheduled)
                try:
                    await client.stream(payloads[i], rec)
                finally:  # an interrupted request is still a row
                    records.append(rec)
                if on_done:
                    on_done(rec)
                scheduled = rec.end_ns

        await asyncio.gather(*(user(u) for u in range(min(concurrency, len(indices)))))

    if warmup:
        await phase(range(0, warmup), True, None)
    await phase(range(warmup, len(payloads)), False, time.monotonic() + max_seconds)
    return records


def run_sync(make_coro):
    """Run a coroutine to completion, also inside Jupyter (whose kernel already runs a loop).

    There it runs on a thread with its own loop; Ctrl-C (a kernel interrupt) cancels the
    requests in flight, which end as rows with their error.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    loop = asyncio.new_event_loop()
    task: list[asyncio.Task] = []

    def target() -> None:
        task.append(loop.create_task(make_coro()))
        try:
            loop.run_until_complete(task[0])
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    thread = threading.Thread(target=target, name="gaplab-load")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        loop.call_soon_threadsafe(task[0].cancel)
        thread.join()
        raise
    return task[0].result() if task and task[0].done() and not task[0].cancelled() else None
