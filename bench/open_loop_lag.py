"""Does the open-loop client keep its schedule with many requests in flight? Sends Poisson
arrivals (load.open_loop) to tests/support/sse_server.py, whose responses take a known time
(first token after 200 ms, then one every 20 ms), so the number in flight follows from the
rate. Prints how late each request went out against the time it was due (sent - scheduled:
the connection is opened load.CONNECT_AHEAD_NS before the due time, and the request written
at it), and how many were in flight at most. With
--gc-on the cyclic garbage collector is left running, to show what pausing it buys.

Server and client are pinned to different cores, as in client_accuracy.py.

    .venv/bin/python bench/open_loop_lag.py [RATE] [REQUESTS] [TOKENS] [--gc-on]   (default 60 600 100)
"""

from __future__ import annotations

import gc
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "lib"))

import sse_server  # noqa: E402

from gaplab.capability.judges import most_at_once  # noqa: E402
from gaplab.measure.client import StreamClient  # noqa: E402
from gaplab.measure.loadgen import arrival_offsets, open_loop, run_sync  # noqa: E402

args = [a for a in sys.argv[1:] if a != "--gc-on"]
rate = float(args[0]) if len(args) > 0 else 60.0
n = int(args[1]) if len(args) > 1 else 600
tokens = int(args[2]) if len(args) > 2 else 100


async def main(url: str) -> list:
    if "--gc-on" in sys.argv:
        gc.enable()  # run_sync paused it
    records: list = []
    async with StreamClient(url, "chat", timeout=60) as client:
        body = client.body("lag", tokens, "fake")
        await open_loop(client, lambda rec, seq: body, arrival_offsets(rate, n, "poisson", seed=1), records)
    return records


server, url = sse_server.start(0.2, 0.02, tokens, cpu=1, log=False)
try:
    with sse_server.pinned(0):
        recs = run_sync(lambda: main(url))  # as a trial runs: its own loop thread, the collector paused
finally:
    server.stop()
bad = [r for r in recs if r.error]
lag = [(r.sent_ns - r.scheduled_ns) / 1e6 for r in recs]
in_flight = most_at_once([(r.sent_ns, r.end_ns) for r in recs])
print(f"{len(recs)} Poisson arrivals at {rate:g}/s, responses of {tokens} tokens (about "
      f"{0.2 + 0.02 * (tokens - 1):.1f} s each): at most {in_flight} in flight, {len(bad)} errors")
print(f"sent - scheduled: median {statistics.median(lag):.3f} ms, p99 {sse_server.p99(lag):.3f} ms, "
      f"max {max(lag):.3f} ms")
