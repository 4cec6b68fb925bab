"""Streaming client: one record per request, one arrival time per streamed chunk.

The openai package builds the endpoint URL and the auth header and serves the
non-streamed calls (the model list, and quality's questions: `complete`, `tokenize`). Streams are read by a plain asyncio protocol: its hot path is
`data_received`, which only stamps each network read with time.perf_counter_ns() and
keeps the bytes. HTTP framing, SSE lines and JSON are parsed after the stream ends, so
parsing never delays the timestamp of another stream's read. (Stamping after an
aiohttp read woke the reading task was 5 ms late at 64 streams here; the openai SDK's
parsed-chunk iterator was measured 59 ms off. See bench/client_capacity.py.)

TTFT is the first chunk that carries output text (content, reasoning or a tool
call): a role-only or empty chunk is not a token. A reasoning model's first answer
chunk (content or a tool call) is kept apart (RequestRecord.first_answer_ns).

A stream succeeded only when its protocol's end marker arrived (`data: [DONE]` for SSE, a
`"done": true` line for Ollama): without it the request is "truncated after N tokens" or,
when the connection was reset, "connection reset after N tokens", whatever the HTTP
framing said. The chunks that did arrive are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Required, TypedDict
from urllib.parse import urlsplit

import openai
import orjson

from gaplab.measure.http1 import body_lines, parse_response
from gaplab.measure.protocols import EVENT_MARKERS, OLLAMA_REPEAT_LIMIT, fill_from_events, fill_from_ollama, ollama_repeats
from gaplab.measure.records import RequestRecord


def merged(base: dict, extra: dict) -> dict:
    """base with extra's fields laid over it, nested mappings merged key by key: a user's
    {"options": {"num_thread": 1}} keeps the {"options": {"num_predict": 48}} gaplab set."""
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def runaway_events(target_tokens: int | None) -> int | None:
    """How many stream events a request with this target output length may receive before the
    client cuts it: twice the target and 16 more (room for the role, finish and usage events, and
    for a server that stops a little late); None, no cut, where no target was set."""
    return None if target_tokens is None else 2 * target_tokens + 16


class _Reads(asyncio.Protocol):
    """Collects (arrival_ns, bytes) per network read; nothing else happens on arrival but a count of
    the events read, so that a stream running far past its target length is cut (limit: events;
    marker: what starts or ends one event in this protocol)."""

    def __init__(self, done: asyncio.Future, limit: int | None, marker: bytes):
        self.reads: list[tuple[int, bytes]] = []
        self.done = done
        self.parsed: tuple | None = None  # parse_response of a complete body, when seen
        self.lost: Exception | None = None  # why the connection dropped before the response ended
        self.limit, self.marker, self.events = limit, marker, 0
        self.runaway = False  # cut by the client: the server ignored the output length
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reads.append((time.perf_counter_ns(), data))
        # A chunked body ends with a zero-size frame; most servers also close (we ask them to).
        if data.endswith(b"0\r\n\r\n") and not self.done.done():
            self.parsed = parse_response(self.reads)
            if self.parsed[3]:
                self.done.set_result(None)
        if self.limit is not None:
            self.events += data.count(self.marker)
            if self.events > self.limit and not self.done.done():
                self.runaway = True
                self.done.set_result(None)
                assert self.transport is not None  # data comes only after connection_made
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.lost = exc  # e.g. ConnectionResetError; None for a clean close
            self.done.set_result(None)


SPIN_NS = 1_500_000  # the last stretch before a due time is waited by yielding, not by a timer (ms granularity)


async def wait_until(ns: int, halt: asyncio.Event | None = None) -> None:
    """Return at perf_counter_ns() >= ns: a timer for most of the wait, then yielding to the loop
    (other streams' reads are served meanwhile), since a timer may fire a millisecond late. Return
    early once halt is set."""
    early = (ns - time.perf_counter_ns() - SPIN_NS) / 1e9
    if early > 0:
        if halt is None:
            await asyncio.sleep(early)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(halt.wait(), early)
            if halt.is_set():
                return
    while time.perf_counter_ns() < ns:
        await asyncio.sleep(0)


class ClientArgs(TypedDict, total=False):
    """StreamClient's arguments, as a trial hands them to each client process (the URL, and any others)."""
    base_url: Required[str]
    api: str
    api_key: str | None
    timeout: float
    protocol: str


class StreamClient:
    """Async streaming client for one OpenAI-compatible endpoint (chat or text completions).

    Each request opens its own connection (llama-server closes a streamed connection;
    reusing a pooled one failed every second request here) and asks the server to close
    it after the response. There is no client-side cap on connections, so the client
    never queues a request.
    """

    def __init__(self, base_url: str, api: str = "chat", api_key: str | None = None,
                 timeout: float = 300.0, protocol: str = "openai"):
        if api not in ("chat", "completions"):
            raise ValueError(f"api: got {api!r}; allowed: 'chat', 'completions'")
        if protocol not in ("openai", "ollama"):
            raise ValueError(f"protocol: got {protocol!r}; allowed: 'openai', 'ollama'")
        self.api, self.protocol = api, protocol
        # no retries: a request that failed is a figure, not something to hide
        self.sdk = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=0)
        if protocol == "ollama":
            path = "api/chat" if api == "chat" else "api/generate"
        else:
            path = "chat/completions" if api == "chat" else "completions"
        self.url = str(self.sdk.base_url).rstrip("/") + "/" + path
        url = urlsplit(self.url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"base_url: got {base_url!r}; it must start with http:// or https://")
        self.host, self.path = url.hostname or "", url.path
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        headers = {"Host": url.netloc, **self.sdk.auth_headers, "Content-Type": "application/json",
                   "Accept": "text/event-stream", "Connection": "close"}
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.timeout = timeout

    async def __aenter__(self) -> "StreamClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.sdk.close()

    def body(self, prompt: str | list[dict], max_tokens: int, model: str, extra: dict | None = None) -> bytes:
        if self.protocol == "ollama":
            body: dict = {"model": model, "stream": True, "keep_alive": "10m",
                          "options": {"num_predict": max_tokens, "temperature": 0}}
        else:
            body = {"model": model, "max_tokens": max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, "temperature": 0}
        if self.api == "chat":  # a string is one user message, a list the messages
            body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        else:  # text completion: messages go as plain text, one per line
            body["prompt"] = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return orjson.dumps(merged(body, extra) if extra else body)

    async def stream(self, payload: bytes, rec: RequestRecord, send_at_ns: int | None = None) -> RequestRecord:
        """Send one streamed request and fill rec; failures are stored in rec.error, never raised.
        send_at_ns: the connection is made at once and the request written at that time (an
        open-loop arrival: the connect, up to a few ms on a busy loop, is not a late send)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        proto = _Reads(done, runaway_events(rec.target_output_tokens), EVENT_MARKERS[self.protocol])
        transport = None
        request = (f"POST {self.path} HTTP/1.1\r\n{self.head}Content-Length: {len(payload)}\r\n\r\n"
                   ).encode() + payload
        # until the request is written: the due time, so a connect that fails before it is no early send
        rec.sent_ns = max(time.perf_counter_ns(), send_at_ns or 0)
        try:
            async with asyncio.timeout(self.timeout):
                transport, _ = await loop.create_connection(lambda: proto, self.host, self.port, ssl=self.ssl)
                if send_at_ns is not None:
                    await wait_until(send_at_ns)
                rec.sent_ns = time.perf_counter_ns()  # the request goes out now, connection made
                transport.write(request)
                await done
        except asyncio.CancelledError:
            rec.fail("cancelled", "cancelled")
            raise
        except TimeoutError:
            rec.fail("timeout", f"no complete response within {self.timeout:g} s")
        except OSError as exc:
            kind = ("refused" if isinstance(exc, ConnectionRefusedError) else
                    "connection reset" if isinstance(exc, ConnectionResetError) else "connection error")
            rec.fail(kind, f"{type(exc).__name__}: {exc}"[:500])
        finally:
            if transport is not None:
                transport.close()
            rec.end_ns = time.perf_counter_ns()
            self._fill(rec, proto.parsed if proto.parsed and proto.parsed[3] else parse_response(proto.reads),
                       proto.lost, proto.runaway)
        return rec

    def _fill(self, rec: RequestRecord, parsed: tuple, lost: Exception | None, runaway: bool) -> None:
        """Fill rec from the response. One error per request, the most telling first: what the
        client saw before parsing (timeout, refused, cancelled), the HTTP status, an error event,
        a stream the client cut for running past its target length, a stream cut off before its
        end marker (reset or clean close), a malformed event, an incomplete HTTP body, no output
        token."""
        status, headers, body, complete = parsed
        rec.http_status = status
        if isinstance(lost, ConnectionResetError):
            cut_kind, cut = "connection reset", "connection reset"
        else:
            cut_kind = "connection lost" if lost else "truncated"
            cut = f"connection lost ({type(lost).__name__}: {lost})"[:300] if lost else "truncated"
        if status is None:
            rec.fail("no HTTP response", "no HTTP response" + (f" ({cut})" if lost else ""), first=True)
            return
        if status != 200:
            text = b"".join(d for _, d in body).decode(errors="replace")
            wait = headers.get("retry-after")  # the server's own answer to load (429, 503): kept in its words
            rec.fail(f"HTTP {status}", f"HTTP {status}: {text[:500]}" + (f" [Retry-After: {wait[:40]}]" if wait else ""),
                     first=True)
            return
        before = rec.error
        if self.protocol == "ollama":
            lines = body_lines(body, b"")
            finished = fill_from_ollama(rec, lines, self.api)
            if not finished and ollama_repeats(lines) >= OLLAMA_REPEAT_LIMIT:
                cut_kind = "Ollama's token repeat limit"
                cut = "stopped by Ollama's token repeat limit (the same token 31 times in a row), without its done line,"
        else:
            finished = fill_from_events(rec, body_lines(body), self.api)
        if before is not None:
            return
        tokens = rec.token_chunks
        if runaway:
            rec.fail("ignored output length",
                     f"server ignored the output length: {tokens} tokens for a target of {rec.target_output_tokens}")
            return
        framed = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
        if not finished:  # beats "malformed": a connection cut mid-line leaves half an event
            rec.fail(cut_kind, f"{cut} after {tokens} tokens")
        elif rec.error is None and framed and not complete:
            rec.fail("incomplete body", f"the response ended before its body was complete (after {tokens} tokens)")
        elif rec.error is None and rec.first_token_ns is None:
            rec.fail("no output token", "stream ended without an output token")

    async def served_models(self) -> list[str]:
        """Model ids the server lists (non-streamed call through the openai SDK)."""
        page = await self.sdk.models.list()
        return [m.id for m in page.data]

    async def complete(self, body: dict) -> tuple[str, str | None, int | None, int | None]:
        """One non-streamed call: (text, finish reason, prompt tokens, completion tokens).
        Raises what the SDK raises; quality stores it as the question's error."""
        if self.api == "chat":
            resp = await self.sdk.chat.completions.create(**body)
            text = resp.choices[0].message.content or ""
        else:
            resp = await self.sdk.completions.create(**body)
            text = resp.choices[0].text or ""
        usage = resp.usage
        return (text, resp.choices[0].finish_reason, usage.prompt_tokens if usage else None,
                usage.completion_tokens if usage else None)

    async def call(self, method: str, path: str,
                   body: dict | None = None) -> tuple[int | None, dict | list | str, float]:
        """One non-streamed GET or POST below the base URL (or to an absolute URL), whatever it
        answers: (HTTP status, or None when no response came; the JSON body, else its text;
        seconds from sending to the whole body). The capability probes judge refusals too."""
        import httpx

        t0 = time.perf_counter()
        try:
            if method == "GET":
                resp = await self.sdk.get(path, cast_to=httpx.Response)
            else:
                resp = await self.sdk.post(path, body=body, cast_to=httpx.Response)
        except openai.APIStatusError as exc:
            resp = exc.response  # type: ignore[assignment]  # openai types get/post's reply as cast_to (httpx), but it is its client's (httpx2)
        except openai.APIError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500], time.perf_counter() - t0
        seconds = time.perf_counter() - t0
        try:
            return resp.status_code, resp.json(), seconds
        except ValueError:
            return resp.status_code, resp.text[:500], seconds

    async def tokenize(self, text: str, model: str) -> list[int] | None:
        """Token ids of a text from the server's own tokenizer: llama.cpp's /tokenize at the server's
        root, else vLLM's; None where neither answers."""
        root = str(self.sdk.base_url).rstrip("/").removesuffix("/v1")
        for body in ({"content": text, "add_special": False},
                     {"model": model, "prompt": text, "add_special_tokens": False}):
            status, answer, _ = await self.call("POST", root + "/tokenize", body)
            if status is None:
                return None
            tokens = answer.get("tokens") if status == 200 and isinstance(answer, dict) else None
            if isinstance(tokens, list):  # else this server's /tokenize wants the other body
                return [t if isinstance(t, int) else t.get("id") for t in tokens]
        return None
