"""Streaming client: one record per request, one arrival time per streamed chunk.

The openai package builds the endpoint URL and the auth header and serves the
non-streamed calls. Streams are read by a plain asyncio protocol: its hot path is
`data_received`, which only stamps each network read with time.perf_counter_ns() and
keeps the bytes. HTTP framing, SSE lines and JSON are parsed after the stream ends, so
parsing never delays the timestamp of another stream's read. (Stamping after an
aiohttp read woke the reading task was 5 ms late at 64 streams here; the openai SDK's
parsed-chunk iterator was measured 59 ms off. See bench/client_capacity.py.)

TTFT is the first chunk that carries output text (content, reasoning or a tool
call): a role-only or empty chunk is not a token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import ssl
from urllib.parse import urlsplit

import openai
import orjson

# Chunk kinds stored in the chunks table.
ROLE, CONTENT, REASONING, TOOL, EMPTY, USAGE = "role", "content", "reasoning", "tool", "empty", "usage"
TOKEN_KINDS = (CONTENT, REASONING, TOOL)


@dataclass
class RequestRecord:
    index: int
    user: int
    warmup: bool
    scheduled_ns: int
    sent_ns: int = 0
    first_token_ns: int | None = None
    last_token_ns: int | None = None
    end_ns: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None
    output_chars: int = 0
    server_timings: dict | None = None
    # (arrival_ns, kind, n_chars) per SSE event, in arrival order
    chunks: list[tuple[int, str, int]] = field(default_factory=list)


def classify(event: dict, api: str) -> tuple[str, int]:
    """Kind of one parsed SSE event and how many output characters it carries."""
    choices = event.get("choices") or []
    if not choices:
        return (USAGE, 0) if event.get("usage") else (EMPTY, 0)
    choice = choices[0]
    if api == "completions":
        text = choice.get("text") or ""
        return (CONTENT, len(text)) if text else (EMPTY, 0)
    delta = choice.get("delta") or {}
    if delta.get("content"):
        return CONTENT, len(delta["content"])
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if reasoning:
        return REASONING, len(reasoning)
    if delta.get("tool_calls"):
        return TOOL, len(orjson.dumps(delta["tool_calls"]))
    if delta.get("role"):
        return ROLE, 0
    return EMPTY, 0


def fill_from_events(rec: RequestRecord, events: list[tuple[int, bytes]], api: str) -> None:
    """Parse the raw `data:` lines of one stream into the record (off the hot path)."""
    loads, chunks, text_key = orjson.loads, rec.chunks, "text" if api == "completions" else "content"
    for arrival_ns, line in events:
        if line.endswith(b"[DONE]"):
            continue
        try:
            event = loads(line[5:])  # orjson skips the space after "data:"
        except orjson.JSONDecodeError:
            rec.error = rec.error or f"malformed stream event: {line[:200]!r}"
            continue
        choices = event.get("choices")
        if choices:
            choice = choices[0]
            part = choice.get("delta", choice) if api == "chat" else choice
            text = part.get(text_key) if part else None
            kind, n_chars = (CONTENT, len(text)) if text else classify(event, api)
            if choice.get("finish_reason"):
                rec.finish_reason = choice["finish_reason"]
        elif "error" in event:
            rec.error = str(event["error"])[:500]
            continue
        else:
            kind, n_chars = classify(event, api)
        chunks.append((arrival_ns, kind, n_chars))
        if kind in TOKEN_KINDS:
            if rec.first_token_ns is None:
                rec.first_token_ns = arrival_ns
            rec.last_token_ns = arrival_ns
            rec.output_chars += n_chars
        usage = event.get("usage")
        if usage:
            rec.prompt_tokens = usage.get("prompt_tokens")
            rec.completion_tokens = usage.get("completion_tokens")
        if "timings" in event:  # llama.cpp's own per-request figures
            rec.server_timings = event["timings"]


class _Reads(asyncio.Protocol):
    """Collects (arrival_ns, bytes) per network read; nothing else happens on arrival."""

    def __init__(self, done: asyncio.Future):
        self.reads: list[tuple[int, bytes]] = []
        self.done = done
        self.parsed: tuple | None = None  # parse_response of a complete body, when seen

    def data_received(self, data: bytes) -> None:
        self.reads.append((time.perf_counter_ns(), data))
        # A chunked body ends with a zero-size frame; most servers also close (we ask them to).
        if data.endswith(b"0\r\n\r\n") and not self.done.done():
            self.parsed = parse_response(self.reads)
            if self.parsed[3]:
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)


def parse_response(reads: list[tuple[int, bytes]]) -> tuple[int | None, dict, list[tuple[int, bytes]], bool]:
    """HTTP/1.1 response from timed reads: (status, headers, [(arrival_ns, body bytes)], complete).

    Decodes chunked transfer encoding; each body piece keeps the arrival time of the read
    that carried it.
    """
    raw = b""
    for k, (ns, data) in enumerate(reads):
        raw += data
        if b"\r\n\r\n" in raw:
            break
    else:
        return None, {}, [], False
    head, rest = raw.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    pieces = [(ns, rest)] + reads[k + 1:]
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        length = int(headers.get("content-length", -1))
        return status, headers, pieces, length >= 0 and sum(len(d) for _, d in pieces) >= length
    out, pending, remaining = [], b"", 0  # remaining: bytes left in the current frame, -1: its CRLF
    for ns, data in pieces:
        buf, pos, got = pending + data, 0, []
        while True:
            if remaining > 0:
                take = buf[pos:pos + remaining]
                got.append(take)
                pos += len(take)
                remaining -= len(take)
                if remaining:
                    break
                remaining = -1
            if remaining == -1:
                if len(buf) - pos < 2:
                    break
                pos, remaining = pos + 2, 0
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            size = int(buf[pos:end].split(b";")[0], 16)
            pos = end + 2
            if size == 0:
                out.append((ns, b"".join(got)))
                return status, headers, out, True
            remaining = size
        pending = buf[pos:]
        out.append((ns, b"".join(got)))
    return status, headers, out, False


def body_lines(body: list[tuple[int, bytes]], prefix: bytes = b"data:") -> list[tuple[int, bytes]]:
    """The lines of a streamed body that start with prefix (SSE `data:` lines; b"" for NDJSON),
    each with the arrival time of its last byte. Blank lines are dropped."""
    events, tail = [], b""
    for ns, data in body:
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        events += [(ns, line.rstrip(b"\r")) for line in lines if line.startswith(prefix) and line.strip()]
    if tail.startswith(prefix) and tail.strip() and body:
        events.append((body[-1][0], tail.rstrip(b"\r")))
    return events


OLLAMA_TIMINGS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                  "eval_count", "eval_duration")


def fill_from_ollama(rec: RequestRecord, lines: list[tuple[int, bytes]], api: str) -> None:
    """Ollama's native stream: one JSON object per line; the last (done: true) holds its own
    counts and durations (nanoseconds), kept as the server's timings."""
    for arrival_ns, line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            rec.error = rec.error or f"malformed stream line: {line[:200]!r}"
            continue
        if "error" in obj:
            rec.error = str(obj["error"])[:500]
            continue
        text = obj.get("response", "") if api == "completions" else (obj.get("message") or {}).get("content", "")
        if not text and (obj.get("message") or {}).get("thinking"):
            kind, text = REASONING, obj["message"]["thinking"]
        else:
            kind = CONTENT if text else EMPTY
        rec.chunks.append((arrival_ns, kind, len(text)))
        if text:
            if rec.first_token_ns is None:
                rec.first_token_ns = arrival_ns
            rec.last_token_ns = arrival_ns
            rec.output_chars += len(text)
        if obj.get("done"):
            rec.finish_reason = obj.get("done_reason")
            rec.prompt_tokens, rec.completion_tokens = obj.get("prompt_eval_count"), obj.get("eval_count")
            rec.server_timings = {k: obj[k] for k in OLLAMA_TIMINGS if k in obj}


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
        self.sdk = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout)
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

    def body(self, prompt: str, max_tokens: int, model: str, extra: dict | None = None) -> bytes:
        if self.protocol == "ollama":
            body: dict = {"model": model, "stream": True, "keep_alive": "10m",
                          "options": {"num_predict": max_tokens, "temperature": 0}}
        else:
            body = {"model": model, "max_tokens": max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, "temperature": 0}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body.update(extra or {})
        return orjson.dumps(body)

    async def stream(self, payload: bytes, rec: RequestRecord) -> RequestRecord:
        """Send one streamed request and fill rec; failures are stored in rec.error, never raised."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        proto = _Reads(done)
        transport = None
        request = (f"POST {self.path} HTTP/1.1\r\n{self.head}Content-Length: {len(payload)}\r\n\r\n"
                   ).encode() + payload
        rec.sent_ns = time.perf_counter_ns()
        try:
            async with asyncio.timeout(self.timeout):
                transport, _ = await loop.create_connection(lambda: proto, self.host, self.port, ssl=self.ssl)
                rec.sent_ns = time.perf_counter_ns()  # the request goes out now, connection made
                transport.write(request)
                await done
        except asyncio.CancelledError:
            rec.error = "cancelled"
            raise
        except TimeoutError:
            rec.error = f"no complete response within {self.timeout:.0f} s"
        except OSError as exc:
            rec.error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            if transport is not None:
                transport.close()
            rec.end_ns = time.perf_counter_ns()
            self._fill(rec, proto.parsed if proto.parsed and proto.parsed[3] else parse_response(proto.reads))
        return rec

    def _fill(self, rec: RequestRecord, parsed: tuple) -> None:
        status, headers, body, complete = parsed
        rec.http_status = status
        if status is None:
            rec.error = rec.error or "no HTTP response"
            return
        if status != 200:
            text = b"".join(d for _, d in body).decode(errors="replace")
            rec.error = rec.error or f"HTTP {status}: {text[:500]}"
            return
        if self.protocol == "ollama":
            fill_from_ollama(rec, body_lines(body, b""), self.api)
        else:
            fill_from_events(rec, body_lines(body), self.api)
        framed = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
        if rec.error is None and framed and not complete:
            rec.error = "the response ended before its body was complete"
        if rec.error is None and rec.first_token_ns is None:
            rec.error = "stream ended without an output token"

    async def served_models(self) -> list[str]:
        """Model ids the server lists (non-streamed call through the openai SDK)."""
        page = await self.sdk.models.list()
        return [m.id for m in page.data]
