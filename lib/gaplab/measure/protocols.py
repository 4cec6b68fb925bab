"""The two stream protocols gaplab reads, parsed after a stream has ended: OpenAI-compatible
SSE (`data:` events, `data: [DONE]` at the end) and Ollama's native NDJSON (one object a line,
the last `"done": true` with the server's own counts and durations). What each protocol's
request body sets to force the length and stream it is here too, with what marks one event
(the client counts them as they arrive, to cut a runaway stream)."""

from __future__ import annotations

import orjson

from gaplab.measure.records import CONTENT, EMPTY, REASONING, ROLE, TOKEN_KINDS, TOOL, USAGE, RequestRecord

# Request fields StreamClient.body sets to force each request's output length and to stream it, by
# protocol: a scenario's extra_body may not set them (runtimes.RuntimeKind.reserved). A dotted name is
# a nested field; max_completion_tokens would override max_tokens on OpenAI-compatible servers.
LENGTH_FIELDS = {"openai": ("max_tokens", "max_completion_tokens", "stream", "stream_options"),
                 "ollama": ("options.num_predict", "stream")}


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


def fill_from_events(rec: RequestRecord, events: list[tuple[int, bytes]], api: str) -> bool:
    """Parse the raw `data:` lines of one stream into the record (off the hot path).

    Returns whether the stream finished: `data: [DONE]` or an error event was seen. A stream
    that stops without either was cut off, however cleanly its connection closed."""
    loads, append, text_key = orjson.loads, rec.chunks.append, "text" if api == "completions" else "content"
    chat, finished = api == "chat", False
    # kept in locals while the events are read, and set on the record once (an attribute a chunk cost more)
    first, last, chars = rec.first_token_ns, rec.last_token_ns, rec.output_chars
    try:
        for arrival_ns, line in events:
            try:
                event = loads(line[5:])  # orjson skips the space after "data:"
            except orjson.JSONDecodeError:  # [DONE] too: no JSON text ends in it, so it is looked for here
                if line.endswith(b"[DONE]"):
                    finished = True
                else:
                    rec.fail("malformed stream", f"malformed stream event: {line[:200]!r}", first=True)
                continue
            choices = event.get("choices")
            if choices:
                choice = choices[0]
                part = choice.get("delta", choice) if chat else choice
                text = part.get(text_key) if part else None
                kind, n_chars = (CONTENT, len(text)) if text else classify(event, api)
                if choice.get("finish_reason"):
                    rec.finish_reason = choice["finish_reason"]
            elif "error" in event:
                rec.fail("error event", str(event["error"])[:500])
                finished = True
                continue
            else:
                kind, n_chars = classify(event, api)
            append((arrival_ns, kind, n_chars))
            if kind in TOKEN_KINDS:
                if first is None:
                    first = arrival_ns
                last = arrival_ns
                chars += n_chars
            usage = event["usage"] if "usage" in event else None
            if usage:
                rec.prompt_tokens = usage.get("prompt_tokens")
                rec.completion_tokens = usage.get("completion_tokens")  # reasoning tokens included
                rec.server_reasoning_tokens = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
            if "timings" in event:  # llama.cpp's own per-request figures
                rec.server_timings = event["timings"]
    finally:
        rec.first_token_ns, rec.last_token_ns, rec.output_chars = first, last, chars
    return finished


# what one stream event holds once, by protocol: an SSE event's field name; every line of
# Ollama's native stream carries its "done" flag (a newline would also count HTTP framing)
EVENT_MARKERS = {"openai": b"data:", "ollama": b'"done":'}


OLLAMA_TIMINGS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                  "eval_count", "eval_duration")


# Ollama (0.33) stops a generation whose last 31 stream events carry the same text (its token
# repeat limit, llm/llama_server.go) and closes the stream without its done line.
OLLAMA_REPEAT_LIMIT = 31


def ollama_repeats(lines: list[tuple[int, bytes]]) -> int:
    """How many of the stream's last events carried the same text (stripped), in a row."""
    run, last = 0, None
    for _, line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        text = (obj.get("response") or (obj.get("message") or {}).get("content") or "").strip()
        run, last = (run + 1, last) if text == last else (1, text)
    return run


def fill_from_ollama(rec: RequestRecord, lines: list[tuple[int, bytes]], api: str) -> bool:
    """Ollama's native stream: one JSON object per line; the last (done: true) holds its own
    counts and durations (nanoseconds), kept as the server's timings. Returns whether the
    stream finished: a `done: true` line or an error line was seen."""
    finished = False
    for arrival_ns, line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            rec.fail("malformed stream", f"malformed stream line: {line[:200]!r}", first=True)
            continue
        if "error" in obj:
            rec.fail("error event", str(obj["error"])[:500])
            finished = True
            continue
        # a thinking model's reasoning: "thinking" beside "response" (/api/generate) or "content" (/api/chat)
        part = obj if api == "completions" else (obj.get("message") or {})
        text = part.get("response" if api == "completions" else "content") or ""
        if not text and part.get("thinking"):
            kind, text = REASONING, part["thinking"]
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
            finished = True
    return finished
