"""How far gaplab's client TTFT is from the truth at 1, 16, 64 and 256 concurrent streams,
and the client's CPU time per streamed chunk, on the default asyncio loop and on uvloop.

The server is tests/support/sse_server.py with injected delays (first token 200 ms after
a request arrives, then one every 20 ms); it logs, per request, when the request arrived
and when its first token was written (one clock for both processes). The error of one
request is the client's TTFT minus that server time, in two legs: the request's way from
the client's send to the server's arrival stamp (which also holds the server's own delay
in accepting a burst of connections), and the first token's way from the server's write
to the client's stamp (the client's own lateness). Server and client are pinned to
different cores; at each level the loops run in turn, so drift hits both alike.

Run: .venv/bin/python bench/client_accuracy.py [--loop both|asyncio|uvloop] [--samples 60]
uvloop is not a dependency of gaplab: `.venv/bin/pip install uvloop` to compare it (without
it, only asyncio is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import sse_server  # noqa: E402

LEVELS = (1, 16, 64, 256)


def loop_factory(name: str):
    if name == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loop", choices=("both", "asyncio", "uvloop"), default="both")
    ap.add_argument("--samples", type=int, default=60, help="at least this many requests per level")
    ap.add_argument("--tokens", type=int, default=20, help="tokens per stream")
    args = ap.parse_args()
    loops = ("asyncio", "uvloop") if args.loop == "both" else (args.loop,)
    if "uvloop" in loops and importlib.util.find_spec("uvloop") is None:
        if args.loop == "uvloop":
            sys.exit("uvloop is not installed: .venv/bin/pip install uvloop")
        print("uvloop is not installed (.venv/bin/pip install uvloop): asyncio only")
        loops = ("asyncio",)
    proc, url = sse_server.start(0.2, 0.02, args.tokens, cpu=1)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; first token at 200 ms, then every 20 ms, {args.tokens} tokens")
    print("TTFT error = request leg (client send -> server's arrival stamp) + token leg (server's write of "
          "the first token -> client's stamp)")
    print(f"{'streams':>7} {'loop':>8} {'requests':>8} {'TTFT error median':>18} {'p99':>9} "
          f"{'request leg median':>19} {'token leg median':>17} {'p99':>8} {'client CPU/chunk':>17}")
    try:
        with sse_server.pinned(0) as pinned:
            print(f"server on core 1, client on core 0: {pinned}")
            for streams in LEVELS:
                rounds = max(2, math.ceil(args.samples / streams))
                for name in loops:
                    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
                        recs, truth, cpu = runner.run(sse_server.measure(proc, url, streams, rounds, args.tokens))
                    bad = [r.error for r in recs.values() if r.error]
                    assert not bad, bad[0]
                    errors = sse_server.ttft_errors(recs, truth)
                    request_leg, token_leg = sse_server.legs(recs, truth)
                    chunks = sum(len(r.chunks) for r in recs.values())
                    print(f"{streams:>7} {name:>8} {len(errors):>8} {statistics.median(errors):>15.2f} ms "
                          f"{sse_server.p99(errors):>6.2f} ms {statistics.median(request_leg):>16.2f} ms "
                          f"{statistics.median(token_leg):>14.2f} ms {sse_server.p99(token_leg):>5.2f} ms "
                          f"{cpu / chunks * 1e6:>13.1f} us", flush=True)
    finally:
        proc.stop()


if __name__ == "__main__":
    main()
