"""Streaming client: one record per request, one arrival time per streamed chunk.

The openai package builds the endpoint URL and the auth header and serves the
non-streamed calls. Streams are read with aiohttp and a lean SSE splitter: the hot
path only stamps each network read with time.perf_counter_ns() and keeps the raw
`data:` lines; JSON is parsed after the stream ends, so parsing never delays the
timestamp of another stream's chunk. (The openai SDK's parsed-chunk iterator was
measured 59 ms off on TTFT at 64 streams; see bench/client_capacity.py.)

TTFT is the first chunk that carries output text (content, reasoning or a tool
call): a role-only or empty chunk is not a token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
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
    for arrival_ns, line in events:
        payload = line[5:].strip()
        if payload == b"[DONE]":
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            rec.error = rec.error or f"malformed stream event: {payload[:200]!r}"
            continue
        if "error" in event and not event.get("choices"):
            rec.error = str(event["error"])[:500]
            continue
        kind, n_chars = classify(event, api)
        rec.chunks.append((arrival_ns, kind, n_chars))
        if kind in TOKEN_KINDS:
            if rec.first_token_ns is None:
                rec.first_token_ns = arrival_ns
            rec.last_token_ns = arrival_ns
            rec.output_chars += n_chars
        for choice in event.get("choices") or []:
            if choice.get("finish_reason"):
                rec.finish_reason = choice["finish_reason"]
        usage = event.get("usage")
        if usage:
            rec.prompt_tokens = usage.get("prompt_tokens")
            rec.completion_tokens = usage.get("completion_tokens")
        if event.get("timings"):  # llama.cpp's own per-request figures
            rec.server_timings = event["timings"]


class StreamClient:
    """Async streaming client for one OpenAI-compatible endpoint (chat or text completions)."""

    def __init__(self, base_url: str, api: str = "chat", api_key: str | None = None,
                 timeout: float = 300.0):
        if api not in ("chat", "completions"):
            raise ValueError(f"api: got {api!r}; allowed: 'chat', 'completions'")
        self.api = api
        self.sdk = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout)
        path = "chat/completions" if api == "chat" else "completions"
        self.url = str(self.sdk.base_url).rstrip("/") + "/" + path
        self.headers = {**self.sdk.auth_headers, "Content-Type": "application/json",
                        "Accept": "text/event-stream"}
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "StreamClient":
        # limit=0: no client-side cap, so the client never queues a request. force_close: one
        # connection per request; llama-server closes a streamed connection, and reusing a
        # pooled one failed every second request here ("Can not write request body").
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=10))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
        await self.sdk.close()

    def body(self, prompt: str, max_tokens: int, model: str, extra: dict | None = None) -> bytes:
        body: dict = {"model": model, "max_tokens": max_tokens, "stream": True,
                      "stream_options": {"include_usage": True}, "temperature": 0}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body.update(extra or {})
        return orjson.dumps(body)

    async def stream(self, payload: bytes, rec: RequestRecord) -> RequestRecord:
        """Send one streamed request and fill rec; failures are stored in rec.error, never raised."""
        assert self._session is not None, "use 'async with StreamClient(...)'"
        events: list[tuple[int, bytes]] = []
        perf = time.perf_counter_ns
        rec.sent_ns = perf()
        try:
            async with self._session.post(self.url, data=payload, headers=self.headers) as resp:
                rec.http_status = resp.status
                if resp.status != 200:
                    rec.error = f"HTTP {resp.status}: {(await resp.text())[:500]}"
                    return rec
                tail = b""
                async for data in resp.content.iter_any():
                    now = perf()
                    lines = (tail + data).split(b"\n")
                    tail = lines.pop()
                    for line in lines:
                        if line.startswith(b"data:"):
                            events.append((now, line))
                if tail.startswith(b"data:"):
                    events.append((perf(), tail))
        except asyncio.CancelledError:
            rec.error = "cancelled"
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            rec.error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        finally:
            rec.end_ns = perf()
            fill_from_events(rec, events, self.api)
        if rec.error is None and rec.first_token_ns is None:
            rec.error = "stream ended without an output token"
        return rec

    async def served_models(self) -> list[str]:
        """Model ids the server lists (non-streamed call through the openai SDK)."""
        page = await self.sdk.models.list()
        return [m.id for m in page.data]
