"""Load drivers. Closed loop: N users, each sends its next request when the last one ends.

Warmup requests run first, at the same concurrency, and are stored flagged. The
measured phase is bounded by a request count and by a wall-clock limit; a request
is never scheduled after the limit, and one in flight finishes (or times out).
"""

from __future__ import annotations

import asyncio
import itertools
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
