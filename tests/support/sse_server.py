"""A local OpenAI-style streaming server with exactly injected delays, for what a real
server cannot do on demand: a known time to first token and a known gap between tokens.

Each response sends a role-only chunk at once, the first token `ttft` seconds after the
request arrived, then one token every `itl` seconds (deadlines from the arrival, so no
drift), then a usage chunk and [DONE]. With SSE_SERVER_LOG=1 it prints, per request, when
the request arrived and when its first token was written (perf_counter_ns). With ttft = itl = 0 it writes everything at once
(the client-capacity benchmark). Run: python sse_server.py PORT TTFT ITL TOKENS [CPU]
"""

import asyncio
import json
import os
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
        writer.write(chunk({**base, "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": tokens}}))
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


if __name__ == "__main__":
    port, ttft, itl, tokens = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    if len(sys.argv) > 5 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(sys.argv[5])})
    asyncio.run(main(port, ttft, itl, tokens))
