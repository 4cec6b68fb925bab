"""What a runtime can do: how the capability probes (probes.py) judge what a server answered,
with the evidence (the status and a short excerpt, or the figure).

Verdicts:
- pass: the server did it, and the evidence shows it;
- fail: the server took the request but did not do it (no tool call although one was
  required, output that breaks the schema, streams served one after another), or answered
  with an error that is not a refusal (no answer, 5xx, 401, 404, 429);
- not offered: the server refused the request as such (HTTP 400, 422 or 501), or, as
  launched, has no way to do it (one model and no adapters; no option that forces the
  output length);
- undecided: the evidence cannot tell (an unforced answer that ran to the length anyway; a
  second send neither clearly faster nor said to be cached).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass

from gaplab.measure.records import RequestRecord

PASS, FAIL, NOT_OFFERED, UNDECIDED = "pass", "fail", "not offered", "undecided"
VERDICTS = (PASS, FAIL, NOT_OFFERED, UNDECIDED)
REFUSALS = (400, 422, 501)  # what a server answers to a request it does not take as such
CAPABILITIES = ("streamed usage", "forced output length", "concurrent streams", "tool calls", "JSON-schema output",
                "logprobs", "prefix cache reuse", "several models or adapters")
BROKEN = ("server start", "probing")  # what a run records when it could not probe: probed again next time
FORCED_TOKENS = 64
ANSWER_TOKENS = 128  # room for a tool call or a JSON answer, also after a thinking model's reasoning
OVERLAP_STREAMS = 4
PREFIX_WORDS = 800  # one token a word: long enough that prefill dominates a 1-token answer
PREFIX_PAIRS = 3
FASTER, NOT_FASTER = 0.5, 0.8  # second/first time: below, the cache clearly served; above, clearly not

TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                   "required": ["city"]}}}
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["country", "capital"],
          "properties": {"country": {"type": "string", "enum": ["France", "Germany", "Spain"]},
                         "capital": {"type": "string", "maxLength": 20}}}


@dataclass
class Finding:
    capability: str
    verdict: str
    evidence: str
    request: str
    value: float | None = None
    unit: str = ""
    http_status: int | None = None

    def row(self) -> dict:
        return asdict(self)


def _excerpt(body, n: int = 160) -> str:
    text = " ".join(body.split()) if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    return text if len(text) <= n else text[:n] + "..."


def _refused(capability: str, request: str, status: int | None, body) -> Finding | None:
    """The finding for a request the server did not take: a refusal of the request as such
    (REFUSALS) is not offered; anything else that is not 200 (no response, 5xx, 401, 404, 429)
    a failure."""
    if status == 200:
        return None
    verdict = NOT_OFFERED if status in REFUSALS else FAIL
    return Finding(capability, verdict, f"HTTP {status}: {_excerpt(body)}", request, http_status=status)


def _stream_refused(capability: str, request: str, rec: RequestRecord) -> Finding | None:
    """The same for a streamed request: its error, judged by its status."""
    if not rec.error:
        return None
    verdict = NOT_OFFERED if rec.http_status in REFUSALS else FAIL
    return Finding(capability, verdict, rec.error[:200], request, http_status=rec.http_status)


def _choice(body) -> dict:
    """The first choice of an OpenAI-style answer, or {}."""
    choices = body.get("choices") if isinstance(body, dict) else None
    return choices[0] if choices else {}


def _cut(body) -> str:
    return "; cut at max_tokens" if _choice(body).get("finish_reason") == "length" else ""


def _message(body) -> dict:
    return _choice(body).get("message") or {}


def judge_tool_call(status: int | None, body, props=None) -> Finding:
    """props: llama.cpp's /props, whose chat template capabilities say why tools may be ignored."""
    request = "chat with one tool (get_weather) and tool_choice 'required'"
    refused = _refused("tool calls", request, status, body)
    if refused:
        return refused
    calls = _message(body).get("tool_calls") or []
    if not calls:
        caps = str((props or {}).get("chat_template_caps", "")) if isinstance(props, dict) else ""
        why = "; the server says its chat template does not support tools" if "'supports_tools': False" in caps else ""
        return Finding("tool calls", FAIL, f"no tool call in the answer{why}{_cut(body)}: "
                       f"{_excerpt(_message(body), 100)}", request, http_status=status)
    fn = calls[0].get("function") or {}
    try:
        args = json.loads(fn.get("arguments") or "")
    except (TypeError, ValueError):
        args = None
    ok = fn.get("name") == "get_weather" and isinstance(args, dict) and isinstance(args.get("city"), str)
    return Finding("tool calls", PASS if ok else FAIL,
                   f"{fn.get('name')}({_excerpt(fn.get('arguments') or '', 80)})"
                   + ("" if ok else f": not a get_weather call with a string city{_cut(body)}"), request,
                   http_status=status)


def _fits(doc, schema: dict) -> bool:
    """Whether doc is an object with exactly the schema's keys, each of its type and enum (SCHEMA's subset
    of JSON Schema)."""
    if not isinstance(doc, dict) or set(doc) != set(schema["properties"]):
        return False
    for key, rule in schema["properties"].items():
        if not isinstance(doc[key], str) or ("enum" in rule and doc[key] not in rule["enum"]):
            return False
        if len(doc[key]) > rule.get("maxLength", 10**9):
            return False
    return True


def judge_json_schema(status: int | None, body) -> Finding:
    request = "chat with response_format json_schema (country from an enum, capital up to 20 characters)"
    refused = _refused("JSON-schema output", request, status, body)
    if refused:
        return refused
    text = _message(body).get("content") or ""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    ok = _fits(doc, SCHEMA)
    why = "" if ok else (": not JSON" if doc is None else ": JSON that breaks the schema") + _cut(body)
    return Finding("JSON-schema output", PASS if ok else FAIL, _excerpt(text, 120) + why, request, http_status=status)


def judge_logprobs(status: int | None, body) -> Finding:
    request = "chat with logprobs and top_logprobs 2"
    refused = _refused("logprobs", request, status, body)
    if refused:
        return refused
    content = (_choice(body).get("logprobs") or {}).get("content") or []
    ok = bool(content) and all(isinstance(t.get("logprob"), (int, float)) and t["logprob"] <= 0
                               and len(t.get("top_logprobs") or []) >= 1 for t in content)
    first = content[0] if content else {}
    return Finding("logprobs", PASS if ok else FAIL,
                   (f"{len(content)} tokens, first {first.get('token')!r} at {first.get('logprob')}" if content
                    else "no logprobs in the answer"), request, value=float(len(content)), unit="tokens",
                   http_status=status)


def judge_models(status: int | None, body, adapters: list | None) -> Finding:
    request = "GET /v1/models (and llama.cpp's /lora-adapters)"
    refused = _refused("several models or adapters", request, status, body)
    if refused:
        return refused
    ids = [m.get("id") for m in body.get("data", [])] if isinstance(body, dict) else []
    n = len(ids) + len(adapters or [])
    words = f"serves {len(ids)} model{'s' if len(ids) != 1 else ''} ({', '.join(map(str, ids))})" + (
        f" and {len(adapters)} adapter{'s' if len(adapters) != 1 else ''}" if adapters else ", no adapters")
    return Finding("several models or adapters", PASS if n > 1 else NOT_OFFERED, words + (
        "" if n > 1 else ": not as launched"), request, value=float(n), unit="models and adapters", http_status=status)


def judge_usage(rec: RequestRecord) -> Finding:
    request = "a streamed chat on the OpenAI-compatible API asking for usage (stream_options include_usage)"
    refused = _stream_refused("streamed usage", request, rec)
    if refused:
        return refused
    if rec.completion_tokens is None:
        return Finding("streamed usage", FAIL, f"no token counts in {len(rec.chunks)} events", request,
                       http_status=rec.http_status)
    return Finding("streamed usage", PASS, f"{rec.prompt_tokens} prompt and {rec.completion_tokens} completion "
                   f"tokens reported in the stream", request, float(rec.completion_tokens), "tokens", rec.http_status)


def _tokens(rec: RequestRecord) -> int:
    return rec.completion_tokens if rec.completion_tokens is not None else rec.token_chunks


def judge_forced_length(forced: RequestRecord, free: RequestRecord | None) -> Finding:
    """forced: the stream sent with the runtime's forcing option; free: the same without it (None
    when the runtime has no such option). It passes only when forcing made the difference."""
    request = (f"a streamed chat for {FORCED_TOKENS} tokens to a prompt that invites a one-word answer, "
               "with and without the runtime's option to ignore the end of text")
    for rec in (forced, free):
        refused = _stream_refused("forced output length", request, rec) if rec else None
        if refused:
            return refused
    n = _tokens(forced)
    if free is None:
        return Finding("forced output length", NOT_OFFERED, f"{n} tokens, finish reason {forced.finish_reason}; the "
                       "runtime has no option that ignores the end of text", request, float(n), "tokens",
                       forced.http_status)
    m = _tokens(free)
    verdict = FAIL if n != FORCED_TOKENS else (PASS if m < FORCED_TOKENS else UNDECIDED)
    return Finding("forced output length", verdict, f"{n} tokens forced, {m} without forcing" + (
        "; the free answer also ran to the length, so this does not show the option works" if verdict == UNDECIDED
        else ""), request, float(n), "tokens", forced.http_status)


def most_at_once(spans: list[tuple[int, int]]) -> int:
    """The most spans (start, end) open at one moment: streams decoding together."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])  # an end sorts before a start
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def judge_overlap(recs: list[RequestRecord]) -> Finding:
    request = f"{OVERLAP_STREAMS} streamed chats sent at once; passes when two or more decode at the same moment"
    for rec in recs:
        refused = _stream_refused("concurrent streams", request, rec)
        if refused:
            return refused
    # a stream that sent no token decodes at no moment
    spans = [(r.first_token_ns, r.last_token_ns) for r in recs if r.first_token_ns is not None and r.last_token_ns is not None]
    k = most_at_once(spans)
    t0 = min(r.sent_ns for r in recs)
    shown = ", ".join(f"{(s - t0) / 1e6:.0f}-{(e - t0) / 1e6:.0f}" for s, e in sorted(spans))
    return Finding("concurrent streams", PASS if k > 1 else FAIL,
                   f"at most {k} of {len(recs)} streams between first and last token at once (ms after "
                   f"sending: {shown})", request, float(k), "streams")


def _cached_tokens(body) -> int | None:
    """Prompt tokens the server says it took from its cache: OpenAI's usage field, or llama.cpp's timings."""
    if not isinstance(body, dict):
        return None
    details = (body.get("usage") or {}).get("prompt_tokens_details") or {}
    if isinstance(details.get("cached_tokens"), int):
        return details["cached_tokens"]
    cache_n = (body.get("timings") or {}).get("cache_n")
    return cache_n if isinstance(cache_n, int) else None


def _prompt_tokens(body) -> int | None:
    n = (body.get("usage") or {}).get("prompt_tokens") if isinstance(body, dict) else None
    return n if isinstance(n, int) else None


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def judge_prefix_cache(pairs: list[tuple[tuple, tuple]]) -> Finding:
    """pairs: per distinct long prompt, (status, body, seconds) of its first and of the identical second
    request. The server's count decides where it gives one: most of the prompt must come from the
    cache (a chat template's shared header alone is not reuse); else the time does."""
    request = (f"{len(pairs)} long prompts ({PREFIX_WORDS} words), each sent twice for one token; "
               "the second should find the first's prompt in the cache")
    for first, second in pairs:
        for status, body, _ in (first, second):
            refused = _refused("prefix cache reuse", request, status, body)
            if refused:
                return refused
    ratios = [second[2] / first[2] for first, second in pairs]
    ratio = statistics.median(ratios)
    cached = [(_cached_tokens(first[1]), _cached_tokens(second[1]), _prompt_tokens(second[1]))
              for first, second in pairs]
    timed = f"second/first time {ratio:.2f}x (median; {min(ratios):.2f}-{max(ratios):.2f})"
    hits = [c[1] for c in cached if c[1] is not None]  # of the second sends
    if len(hits) == len(cached):
        shares = [hit / c[2] if c[2] else 0.0 for hit, c in zip(hits, cached)]
        verdict = PASS if min(shares) >= 0.5 else FAIL
        said = (f"server: {_span(hits)} of {_span([c[2] or 0 for c in cached])} prompt tokens "
                f"from cache on the second send, {_span([c[0] or 0 for c in cached])} on the first")
    else:  # no count reported: the time says it, where it is clear
        verdict = PASS if ratio < FASTER else FAIL if ratio > NOT_FASTER else UNDECIDED
        said = "no cached-token count reported; judged by the time"
    return Finding("prefix cache reuse", verdict, f"{said}; {timed}", request, ratio, "x")
