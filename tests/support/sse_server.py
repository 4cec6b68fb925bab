"""A local OpenAI-style streaming server with exactly injected delays, for what a real
server cannot do on demand: a known time to first token and a known gap between tokens.

Each response sends a role-only chunk at once, the first token `ttft` seconds after the
request arrived, then one token every `itl` seconds (deadlines from the arrival, so no
drift), then a usage chunk and [DONE]. With SSE_SERVER_LOG=1 it prints, per request, when
the request arrived and when its first token was written (perf_counter_ns). With
ttft = itl = 0 it writes everything at once (the client-capacity benchmark).
Run: python sse_server.py PORT TTFT ITL TOKENS [CPU]

The helpers at the end (start, pinned, measure, ttft_errors, legs) start it from a test
or a benchmark, drive it with gaplab's StreamClient and compare what the client saw with
the server's log.
"""

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

LOG_TRUTH = os.environ.get("SSE_SERVER_LOG") == "1"


def frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunked-encoding frame."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunk(obj: dict) -> bytes:
    return frame(b"data: " + json.dumps(obj).encode() + b"\n\n")


async def handle(reader, writer, ttft: float, itl: float, tokens: int) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET "):  # /v1/models, which attaching to a server asks first: no list
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
                         b"Connection: close\r\n\r\n{\"data\": []}")
            await writer.drain()
            return
        arrived_ns = time.perf_counter_ns()  # CLOCK_MONOTONIC: the client's clock too
        arrived = time.monotonic()
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = json.loads(await reader.readexactly(length))
        first_sent_ns = None
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        base = {"id": "x", "object": "chat.completion.chunk", "model": "fake"}
        writer.write(chunk({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}))
        await writer.drain()
        token = chunk({**base, "choices": [{"index": 0, "delta": {"content": " tok"}}]})
        sent = tokens
        if ttft == 0 and itl == 0:  # capacity mode: the whole stream in one write
            writer.write(token * tokens)
            tokens = 0
        for k in range(tokens):
            delay = arrived + ttft + k * itl - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                writer.write(token)
                await writer.drain()
            else:
                writer.write(token)
            if first_sent_ns is None:
                first_sent_ns = time.perf_counter_ns()
        writer.write(chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}))
        writer.write(chunk({**base, "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": sent}}))
        writer.write(frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        if LOG_TRUTH:  # what the server really did, for the timing test to compare against
            print(json.dumps({"id": body["messages"][0]["content"], "arrived_ns": arrived_ns,
                              "first_token_sent_ns": first_sent_ns}), flush=True)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port: int, ttft: float, itl: float, tokens: int) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, ttft, itl, tokens), "127.0.0.1", port,
                                        backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def start(ttft_s: float, itl_s: float, tokens: int, cpu: int | None = 1, log: bool = True):
    """This server in a process of its own, pinned to core `cpu` when there are several
    (the client then takes another one, see pinned). Returns (ServerProcess, base URL)."""
    from gaplab.runtimes.process import free_port, start

    port = free_port()
    args = [sys.executable, __file__, str(port), str(ttft_s), str(itl_s), str(tokens)]
    if cpu is not None and (os.cpu_count() or 1) > 1:
        args.append(str(cpu))
    server = start(args, stdout=subprocess.PIPE, text=True,
                   env={**os.environ, "SSE_SERVER_LOG": "1" if log else "0"})
    assert server.proc.stdout.readline().strip() == "ready"
    return server, f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def serving(ttft_s: float, itl_s: float, tokens: int, cpu: int | None = 1, log: bool = False):
    """start(), stopped on leaving; yields the base URL (a test's module fixture)."""
    server, url = start(ttft_s, itl_s, tokens, cpu, log)
    try:
        yield url
    finally:
        server.stop()


@contextlib.contextmanager
def pinned(cpu: int = 0):
    """Run this process on core `cpu` while inside (no-op on one core or without affinity)."""
    pin = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1
    before = os.sched_getaffinity(0) if pin else None
    if pin:
        os.sched_setaffinity(0, {cpu})
    try:
        yield pin
    finally:
        if pin:
            os.sched_setaffinity(0, before)


async def measure(server, url: str, streams: int, rounds: int, tokens: int):
    """`rounds` rounds of `streams` concurrent requests through StreamClient. Returns
    ({id: RequestRecord}, {id: (arrived_ns, first_token_sent_ns)} from the server's log,
    client CPU seconds spent in the rounds). The log is read after each round, so the
    server's pipe never fills."""
    from gaplab.measure.client import StreamClient
    from gaplab.measure.records import RequestRecord

    recs, truth, cpu = {}, {}, 0.0
    async with StreamClient(url, "chat") as client:
        for k in range(rounds):
            batch = {f"r{k}-{i}": RequestRecord(index=i, user=i, warmup=False, scheduled_ns=time.perf_counter_ns())
                     for i in range(streams)}
            payloads = {key: client.body(key, tokens, "fake") for key in batch}
            t0 = time.process_time()
            await asyncio.gather(*(client.stream(payloads[key], r) for key, r in batch.items()))
            cpu += time.process_time() - t0
            recs.update(batch)
            for _ in batch:
                line = json.loads(server.proc.stdout.readline())
                truth[line["id"]] = (line["arrived_ns"], line["first_token_sent_ns"])
    return recs, truth, cpu


def ttft_errors(recs: dict, truth: dict) -> list[float]:
    """Per request: the client's TTFT minus what the server really did (from the request's
    arrival to the write of its first token), in ms."""
    return [((r.first_token_ns - r.sent_ns) - (truth[key][1] - truth[key][0])) / 1e6 for key, r in recs.items()]


def legs(recs: dict, truth: dict) -> tuple[list[float], list[float]]:
    """The two parts of each TTFT error, in ms (one clock for both processes): the request's
    way from the client's send to the server's arrival stamp, and the first token's way from
    the server's write to the client's stamp."""
    return ([(truth[key][0] - r.sent_ns) / 1e6 for key, r in recs.items()],
            [(r.first_token_ns - truth[key][1]) / 1e6 for key, r in recs.items()])


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[98]


if __name__ == "__main__":
    port, ttft, itl, tokens = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    if len(sys.argv) > 5 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(sys.argv[5])})
    asyncio.run(main(port, ttft, itl, tokens))
