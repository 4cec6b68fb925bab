"""How many streamed chunks per second the client ingests, against a local server that
sends every chunk at once (no delays), at 1, 8 and 64 concurrent streams. Server and
client are pinned to different cores.

Two reference readers run in the same process, against the same server:
- line-iterator: aiohttp, one `await` per SSE line and json.loads per line, the way
  vLLM's benchmark client reads a stream (about 190,000 chunks/s was measured for
  vLLM's own client on this kind of machine);
- openai-sdk: the openai package's parsed stream (`stream=True`).
The target: gaplab's client at least matches the line-iterator at every level.

Run: .venv/bin/python bench/client_capacity.py [--tokens 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import sse_server  # noqa: E402
from gaplab.client import StreamClient  # noqa: E402
from gaplab.records import RequestRecord  # noqa: E402


# Each reader: setup(url) -> (state, close), built outside the timing; run(state, streams) -> chunks read.


async def gaplab_setup(url: str):
    client = StreamClient(url, "chat")
    return client, client.sdk.close


async def gaplab_run(client: StreamClient, streams: int) -> int:
    payload = client.body("hi", 1, "fake")
    recs = [RequestRecord(index=i, user=i, warmup=False, scheduled_ns=0) for i in range(streams)]
    await asyncio.gather(*(client.stream(payload, r) for r in recs))
    assert all(r.error is None for r in recs), recs[0].error
    return sum(len(r.chunks) for r in recs)


async def line_iterator_setup(url: str):
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
    return (url, session), session.close


async def line_iterator_run(state, streams: int) -> int:
    url, session = state
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def one() -> int:
        n, first = 0, None
        async with session.post(url + "/chat/completions", json=body) as resp:
            async for line in resp.content:
                line = line.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[5:])
                now = time.perf_counter_ns()
                if first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                    first = now
                n += 1
        return n

    return sum(await asyncio.gather(*(one() for _ in range(streams))))


async def openai_setup(url: str):
    client = openai.AsyncOpenAI(base_url=url, api_key="none")
    return client, client.close


async def openai_run(client, streams: int) -> int:
    async def one() -> int:
        n = 0
        stream = await client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True)
        async for _ in stream:
            n += 1
        return n

    return sum(await asyncio.gather(*(one() for _ in range(streams))))


async def timed(setup, run, url: str, streams: int) -> float:
    state, close = await setup(url)
    try:
        t0 = time.perf_counter()
        n = await run(state, streams)
        return n / (time.perf_counter() - t0)
    finally:
        await close()


READERS = {"gaplab": (gaplab_setup, gaplab_run), "line-iterator": (line_iterator_setup, line_iterator_run),
           "openai-sdk": (openai_setup, openai_run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2000, help="chunks per stream")
    ap.add_argument("--rounds", type=int, default=3, help="repeats per level (the median is shown)")
    args = ap.parse_args()
    server, url = sse_server.start(0, 0, args.tokens, cpu=1, log=False)
    try:
        with sse_server.pinned(0) as pinned:
            print(f"server pinned to core 1, client to core 0: {pinned}; {args.tokens} chunks per stream")
            print(f"{'streams':>7} {'reader':>14} {'chunks/s':>10} {'vs line-iterator':>17}")
            for streams in (1, 8, 64):
                rates = {}
                for name, (setup, run) in READERS.items():
                    rates[name] = statistics.median(asyncio.run(timed(setup, run, url, streams))
                                                    for _ in range(args.rounds))
                for name, rate in rates.items():
                    print(f"{streams:>7} {name:>14} {rate:>10,.0f} {rate / rates['line-iterator']:>16.2f}x")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
