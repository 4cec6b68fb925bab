"""A local server that answers each request with one fault, named by the request's prompt
(the user message, or `prompt` for text completions), so that a test can check how the
client records every way a stream goes wrong. OpenAI-style SSE on any path; Ollama's
NDJSON on /api/chat and /api/generate.

A normal stream is a role-only chunk, TOKENS tokens, a finish_reason chunk, a usage chunk
and `data: [DONE]`; a cut stream stops after CUT_AFTER tokens. A reasoning model's stream
(REASONING) sends THOUGHTS reasoning chunks first, then waits THINK_PAUSE_S before its TOKENS
answer tokens. Faults ending in `-length` frame the body with content-length, `-close` with
nothing (the close ends it), the others with chunked encoding.

In a test: `server = await start()`, then `server.sockets[0].getsockname()[1]` is the port.
By hand: python fault_server.py PORT

A hostile server (`start(hostile=True)`, `serving(hostile=True)`, or `--hostile` by hand)
answers whatever it is asked, and every string it sends is HOSTILE markup: the model id it
lists (/v1/models) and names in its answers, its version (/version), the text it streams
or returns (chat or text completions), and the body of the HTTP 500 it answers to every
ERROR_EVERY-th request. For the test that the report keeps what a server says as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import sys
import threading

TOKENS, CUT_AFTER, SLOW_HEADERS_S = 5, 3, 0.3
THOUGHTS, THINK_PAUSE_S = 4, 0.25
# reasoning streams -> how the server marks reasoning: vLLM's and llama.cpp's reasoning_content (this
# server's usage then counts 2 tokens a chunk, as one that batches its stream would), newer vLLM's
# and OpenRouter's `reasoning` (no count in its usage), Ollama's `thinking`
REASONING = {"reasoning": "reasoning_content", "reasoning-field": "reasoning", "ollama-thinking": "thinking"}

# fault -> the error the client must record (None: no error); "{n}" is a token count.
FAULTS = {
    "ok": None, "ok-length": None, "ok-close": None,
    "http-429": "HTTP 429: ", "http-500": "HTTP 500: ", "http-503": "HTTP 503: ",
    "hang": "no complete response within",
    "malformed": "malformed stream event: ",
    "error-event": "{'message': 'the model crashed', 'type': 'server_error', 'code': 500}",
    "slow-headers": None,
    "reset": "connection reset after 3 tokens", "reset-length": "connection reset after 3 tokens",
    "reset-close": "connection reset after 3 tokens",
    "truncated": "truncated after 3 tokens", "truncated-length": "truncated after 3 tokens",
    "truncated-close": "truncated after 3 tokens",
    "no-final-chunk": "the response ended before its body was complete (after 5 tokens)",
    "ollama-ok": None, "ollama-truncated": "truncated after 3 tokens", "ollama-error": "model runner crashed",
    # Ollama 0.33 ends a stream whose last 31 tokens are the same, cleanly, without its done line
    "ollama-repeat-limit": "stopped by Ollama's token repeat limit (the same token 31 times in a row), without its "
                           "done line, after 31 tokens",
    # tokens until the client gives up: one that asked for TOKENS cuts it at 2 x TOKENS + 16 events
    "endless": "server ignored the output length: ", "ollama-endless": "server ignored the output length: ",
    **dict.fromkeys(REASONING),
}


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def openai_events(fault: str) -> list[bytes | None]:
    base = {"id": "f", "object": "chat.completion.chunk", "model": "fake"}
    token = sse({**base, "choices": [{"index": 0, "delta": {"content": " tok"}}]})
    events = [sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    events += [token] * TOKENS
    events += [sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
               sse({**base, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": TOKENS}}),
               b"data: [DONE]\n\n"]
    if fault in REASONING:
        usage = {"prompt_tokens": 4, "completion_tokens": TOKENS + THOUGHTS}
        if fault == "reasoning":
            usage.update(completion_tokens=TOKENS + 2 * THOUGHTS,
                         completion_tokens_details={"reasoning_tokens": 2 * THOUGHTS})
        thought = sse({**base, "choices": [{"index": 0, "delta": {REASONING[fault]: " hmm"}}]})
        answer = events[1:-2]  # the tokens and the finish chunk, after a pause (None)
        events = [events[0], *[thought] * THOUGHTS, None, *answer, sse({**base, "choices": [], "usage": usage}),
                  events[-1]]
    if fault == "malformed":
        events.insert(2, b'data: {"choices": [{"delta": {"content": "x"\n\n')
    if fault == "error-event":  # vLLM and llama.cpp send an error as a data event, mid-stream
        error = {"message": "the model crashed", "type": "server_error", "code": 500}
        events = events[:2] + [sse({"error": error})]
    return events


def ollama_lines(fault: str, generate: bool = False) -> list[bytes | None]:
    """generate: /api/generate's lines ("response", "thinking" at the top), else /api/chat's.
    None: a pause (THINK_PAUSE_S), as in openai_events."""
    def say(text: str, key: str = "content", **more) -> bytes:
        part = {"response" if key == "content" else key: text} if generate else {
            "message": {"role": "assistant", key: text}}
        return json.dumps({"model": "fake", **part, **more}).encode() + b"\n"

    line = say(" tok", done=False)
    thoughts = THOUGHTS if fault in REASONING else 0
    done = say("", done=True, done_reason="length", prompt_eval_count=4, eval_count=TOKENS + thoughts,
               eval_duration=1000)
    if fault == "ollama-error":  # Ollama ends a failed stream with an error line, no done line
        return [line, b'{"error":"model runner crashed"}\n']
    if fault == "ollama-repeat-limit":
        return [line] * 31
    return [say(" hmm", "thinking", done=False)] * thoughts + [None] * bool(thoughts) + [line] * TOKENS + [done]


def frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def endless(writer: asyncio.StreamWriter, ollama: bool) -> None:
    """A stream that ignores the asked length: a token every ms until the client closes."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                 b"Connection: close\r\n\r\n")
    piece = ollama_lines("ollama-ok")[0] if ollama else openai_events("ok")[1]
    while not writer.is_closing():
        writer.write(frame(piece))
        await writer.drain()
        await asyncio.sleep(0.001)


async def respond(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, fault: str, path: str) -> None:
    if fault.startswith("http-"):
        status = int(fault[5:])
        body = json.dumps({"error": {"message": f"fault {fault}", "code": status}}).encode()
        writer.write(b"HTTP/1.1 %d Fault\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, len(body), body))
        return
    if fault == "hang":  # never answer; return when the client gives up and closes
        await reader.read()
        return
    if fault == "slow-headers":
        await asyncio.sleep(SLOW_HEADERS_S)
    ollama = path.startswith("/api/")
    if fault.endswith("endless"):
        await endless(writer, ollama)
        return
    pieces = ollama_lines(fault, path.endswith("/generate")) if ollama else openai_events(fault)
    cut = fault.removeprefix("ollama-").startswith(("reset", "truncated"))
    sent = pieces[:CUT_AFTER + (0 if ollama else 1)] if cut else pieces  # + the role chunk
    framing = fault.rsplit("-", 1)[1] if fault.endswith(("-length", "-close")) else "chunked"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nConnection: close\r\n" % (
        b"application/x-ndjson" if ollama else b"text/event-stream")
    if framing == "chunked":
        head += b"Transfer-Encoding: chunked\r\n"
    elif framing == "length":  # the length of the whole stream, as if it were not cut
        head += b"Content-Length: %d\r\n" % sum(map(len, pieces))
    writer.write(head + b"\r\n")
    for piece in sent:
        if piece is None:  # a reasoning model done thinking: its answer starts later
            await asyncio.sleep(THINK_PAUSE_S)
            continue
        writer.write(frame(piece) if framing == "chunked" else piece)
        await writer.drain()
        await asyncio.sleep(0.002)  # separate reads, like a real stream
    if fault.startswith("reset"):
        await asyncio.sleep(0.05)  # let the tokens reach the client before the reset
        sock = writer.get_extra_info("socket")  # linger 0: close() sends RST, the client sees ECONNRESET
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    elif framing == "chunked" and fault != "no-final-chunk":
        writer.write(b"0\r\n\r\n")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, every: str = "") -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = json.loads(await reader.readexactly(length))
        fault = every or (body["messages"][0]["content"] if "messages" in body else body["prompt"])
        if fault not in FAULTS:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        else:
            await respond(writer, reader, fault, path)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


HOSTILE = '<img src=x onerror=alert(1)><script>document.title="PWNED"</script>'
ERROR_EVERY = 4


def _answer(status: int, obj, content_type: bytes = b"application/json") -> bytes:
    body = json.dumps(obj).encode()
    return (b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, content_type, len(body), body))


def hostile_reply(path: str, body: dict | None, n: int) -> bytes:
    """The whole HTTP response of a hostile server to its n-th request (GET: body None). Its
    answers differ by n, so two runtimes attached to it never agree (the quality page then
    shows their texts)."""
    if body is None:
        if path.endswith("/models"):
            return _answer(200, {"object": "list", "data": [{"id": HOSTILE, "object": "model", "owned_by": HOSTILE}]})
        if path.endswith("/version"):
            return _answer(200, {"version": HOSTILE})
        return _answer(404, {"error": {"message": HOSTILE}})
    if n % ERROR_EVERY == 0:
        return _answer(500, {"error": {"message": HOSTILE, "type": HOSTILE}})
    text = "prompt" in body and "messages" not in body  # the text completions endpoint
    content = f"{HOSTILE} {n}"
    usage = {"prompt_tokens": 4, "completion_tokens": TOKENS, "total_tokens": 4 + TOKENS}
    if not body.get("stream"):
        choice = ({"index": 0, "text": content, "finish_reason": "length"} if text else
                  {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length"})
        return _answer(200, {"id": HOSTILE, "object": "text_completion" if text else "chat.completion",
                             "model": HOSTILE, "choices": [choice], "usage": usage})
    base = {"id": HOSTILE, "object": "text_completion" if text else "chat.completion.chunk", "model": HOSTILE}
    def piece(s: str, finish=None) -> dict:
        return {**base, "choices": [{"index": 0, "finish_reason": finish,
                                     **({"text": s} if text else {"delta": {"content": s}})}]}
    events = [piece(content)] + [piece(f" {HOSTILE}") for _ in range(TOKENS - 1)] + [piece("", "length"),
                                                                                      {**base, "choices": [], "usage": usage}]
    stream = b"".join(sse(e) for e in events) + b"data: [DONE]\n\n"
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(stream), stream))


async def handle_hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        method, path = head.split(b" ", 2)[:2]
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = json.loads(await reader.readexactly(length)) if method == b"POST" else None
        writer.write(hostile_reply(path.decode(), body, next(counter)))
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def start(port: int = 0, hostile: bool = False, every: str = "") -> asyncio.Server:
    """hostile: the hostile server above; every: answer every request with this fault, whatever it
    asks (a server that always fails, say)."""
    counter = itertools.count(1)
    handler = (lambda r, w: handle_hostile(r, w, counter)) if hostile else (lambda r, w: handle(r, w, every))
    return await asyncio.start_server(handler, "127.0.0.1", port, backlog=256)


@contextlib.contextmanager
def serving(hostile: bool = False):
    """This server on an event loop in a thread of this process, for a test whose client runs in
    other processes (the gaplab CLI); yields its base URL (…/v1) and stops on leaving."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(0, hostile), loop).result()
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()
        asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def main(port: int, hostile: bool) -> None:
    server = await start(port, hostile)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), "--hostile" in sys.argv[2:]))
