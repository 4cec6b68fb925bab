"""What a runtime can do, measured: each probe sends real requests to a running server and
judges what came back, with the evidence (the status and a short excerpt).

Verdicts:
- pass: the server did it, and the evidence shows it;
- fail: the server took the request but did not do it (no tool call although one was
  required, output that breaks the schema, streams served one after another);
- not offered: the server refused the request (HTTP 4xx), or, as launched, has no way to do
  it (one model and no adapters; no option that forces the output length).

Asking and judging are apart: `judge_*` functions read responses and are tested on their
own; `probe` sends the requests. Streams go through the runtime's own protocol (the client
the sweep measures with), the other calls through its OpenAI-compatible /v1 API.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from gaplab.client import StreamClient
from gaplab.records import TOKEN_KINDS, RequestRecord
from gaplab.workload import WORDS

PROBES_VERSION = 1  # part of each probe run's cell key: a new version probes again
PASS, FAIL, NOT_OFFERED = "pass", "fail", "not offered"
FORCED_TOKENS = 64
OVERLAP_STREAMS = 4
PREFIX_WORDS = 800  # one token a word: long enough that prefill dominates a 1-token answer
PREFIX_PAIRS = 3
TIMEOUT = 300.0  # vLLM's CPU build compiles a grammar on the first constrained request
BROKEN = ("server start", "probing")  # what a run records when it could not probe: probed again next time

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
    """The finding for a request the server did not take: a 4xx is a refusal, anything else
    that is not 200 (no response, a 5xx) a failure."""
    if status == 200:
        return None
    verdict = NOT_OFFERED if status is not None and 400 <= status < 500 else FAIL
    return Finding(capability, verdict, f"HTTP {status}: {_excerpt(body)}", request, http_status=status)


def _message(body) -> dict:
    choices = body.get("choices") if isinstance(body, dict) else None
    return (choices[0].get("message") or {}) if choices else {}


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
        return Finding("tool calls", FAIL, f"no tool call in the answer{why}: {_excerpt(_message(body), 100)}",
                       request, http_status=status)
    fn = calls[0].get("function") or {}
    try:
        args = json.loads(fn.get("arguments") or "")
    except (TypeError, ValueError):
        args = None
    ok = fn.get("name") == "get_weather" and isinstance(args, dict) and isinstance(args.get("city"), str)
    return Finding("tool calls", PASS if ok else FAIL,
                   f"{fn.get('name')}({_excerpt(fn.get('arguments') or '', 80)})"
                   + ("" if ok else ": not a get_weather call with a string city"), request, http_status=status)


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
    why = "" if ok else (": not JSON" if doc is None else ": JSON that breaks the schema")
    return Finding("JSON-schema output", PASS if ok else FAIL, _excerpt(text, 120) + why, request, http_status=status)


def judge_logprobs(status: int | None, body) -> Finding:
    request = "chat with logprobs and top_logprobs 2"
    refused = _refused("logprobs", request, status, body)
    if refused:
        return refused
    choices = body.get("choices") if isinstance(body, dict) else None
    content = ((choices[0].get("logprobs") or {}).get("content") or []) if choices else []
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
    request = "a streamed chat asking for usage (stream_options include_usage)"
    if rec.error:
        return Finding("streamed usage", FAIL, rec.error[:200], request, http_status=rec.http_status)
    if rec.completion_tokens is None:
        return Finding("streamed usage", FAIL, f"no token counts in {len(rec.chunks)} events", request,
                       http_status=rec.http_status)
    return Finding("streamed usage", PASS, f"{rec.prompt_tokens} prompt and {rec.completion_tokens} completion "
                   f"tokens reported in the stream", request, float(rec.completion_tokens), "tokens", rec.http_status)


def judge_forced_length(rec: RequestRecord, forcing: bool) -> Finding:
    request = f"a streamed chat for exactly {FORCED_TOKENS} tokens, to a prompt that invites a one-word answer"
    if rec.error:
        return Finding("forced output length", FAIL, rec.error[:200], request, http_status=rec.http_status)
    n = rec.completion_tokens if rec.completion_tokens is not None else sum(k in TOKEN_KINDS for _, k, _ in rec.chunks)
    ok = n == FORCED_TOKENS
    verdict = PASS if ok else (FAIL if forcing else NOT_OFFERED)
    return Finding("forced output length", verdict, f"{n} tokens, finish reason {rec.finish_reason}" + (
        "" if ok or forcing else "; the runtime has no option that ignores the end of text"), request,
        float(n), "tokens", rec.http_status)


def most_at_once(spans: list[tuple[int, int]]) -> int:
    """The most spans (start, end) open at one moment: streams decoding together."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])  # an end sorts before a start
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def judge_overlap(recs: list[RequestRecord]) -> Finding:
    request = f"{OVERLAP_STREAMS} streamed chats sent at once"
    bad = [r.error for r in recs if r.error]
    if bad:
        return Finding("concurrent streams", FAIL, bad[0][:200], request)
    spans = [(r.first_token_ns, r.last_token_ns) for r in recs]
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


def judge_prefix_cache(pairs: list[tuple[tuple, tuple]]) -> Finding:
    """pairs: per distinct long prompt, (status, body, seconds) of its first and of the identical second request."""
    request = (f"{len(pairs)} long prompts ({PREFIX_WORDS} words), each sent twice for one token; "
               "the second should find the first's prompt in the cache")
    for first, second in pairs:
        for status, body, _ in (first, second):
            refused = _refused("prefix cache reuse", request, status, body)
            if refused:
                return refused
    ratios = [second[2] / first[2] for first, second in pairs]
    ratio = statistics.median(ratios)
    cached = [_cached_tokens(second[1]) for _, second in pairs]
    timed = f"second/first time {ratio:.2f}x (median; {min(ratios):.2f}-{max(ratios):.2f})"
    if all(c is not None for c in cached):
        ok = min(cached) > 0
        said = f"server: {min(cached)}{'' if min(cached) == max(cached) else f'-{max(cached)}'} prompt tokens " \
               "from cache on the second"
    else:  # no count reported: the time says it
        ok = ratio < 0.5
        said = "no cached-token count reported; judged by the time"
    return Finding("prefix cache reuse", PASS if ok else FAIL, f"{said}; {timed}", request, ratio, "x")


def _has_forcing(extra: dict) -> bool:
    return any(k in extra for k in ("ignore_eos", "min_tokens"))


async def probe(server, api_key: str | None = None) -> list[Finding]:
    """Every probe against one server, one after another (the overlap probe's streams at once)."""
    model, extra = server.served_model, server.extra_body
    chat = {"model": model, "temperature": 0}
    words = random.Random(f"capability:{model}")

    async with StreamClient(server.base_url, "chat", api_key, TIMEOUT, server.protocol) as streams, \
            StreamClient(server.openai_url, "chat", api_key, TIMEOUT) as api:
        async def stream(prompt: str, n: int, body_extra: dict) -> RequestRecord:
            rec = RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0)
            return await streams.stream(streams.body(prompt, n, model, body_extra), rec)

        async def ask(messages: str, **fields):
            return await api.call("POST", "chat/completions", {
                **chat, "messages": [{"role": "user", "content": messages}], **fields})

        found = [judge_usage(await stream("Count from one to ten.", 16, {}))]
        found.append(judge_forced_length(await stream("Reply with the single word OK.", FORCED_TOKENS, extra),
                                         _has_forcing(extra)))
        recs = await asyncio.gather(*(stream(f"Write a short story about the number {i}.", 32, extra)
                                      for i in range(OVERLAP_STREAMS)))
        found.append(judge_overlap(list(recs)))
        root = server.openai_url.rstrip("/").removesuffix("/v1")
        props = await api.call("GET", root + "/props")
        found.append(judge_tool_call(*(await ask("What is the weather in Paris?", tools=[TOOL],
                                                 tool_choice="required", max_tokens=64))[:2],
                                     props[1] if props[0] == 200 else None))
        found.append(judge_json_schema(*(await ask(
            "Name a country in Europe and its capital, as JSON.", max_tokens=64,
            response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": SCHEMA,
                                                                    "strict": True}}))[:2]))
        found.append(judge_logprobs(*(await ask("Say hello.", max_tokens=4, logprobs=True, top_logprobs=2))[:2]))
        pairs = []
        for _ in range(PREFIX_PAIRS):
            prompt = " ".join(words.choices(WORDS, k=PREFIX_WORDS)) + "\nSay yes."
            pairs.append((await ask(prompt, max_tokens=1), await ask(prompt, max_tokens=1)))
        found.append(judge_prefix_cache(pairs))
        listed = await api.call("GET", "models")
        status, adapters, _ = await api.call("GET", root + "/lora-adapters")
        found.append(judge_models(*listed[:2], adapters if status == 200 and isinstance(adapters, list) else None))
    return found


def measured_at() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Probing:
    """The probes of one server as a sessions.Measurement: stores one capability run."""

    def __init__(self, cell, raw_dir: Path):
        from gaplab import store

        self.cell, self.raw_dir, self.run_id = cell, raw_dir, store.new_run_id()
        self.findings: list[Finding] = []

    def identity(self, server):
        from gaplab.sessions import run_identity

        return run_identity(self.cell, server, self.run_id, cell_id=f"{self.cell.server_key}/capabilities",
                            cell_key=probe_key(self.cell), workload="capability-probe", concurrency=OVERLAP_STREAMS)

    def _write(self, server, rows: list[dict], status: str, error: str | None = None) -> None:
        from gaplab import store

        stamp = measured_at()
        store.write_capability(self.raw_dir, self.identity(server), [{**r, "measured_at": stamp} for r in rows],
                               {"status": status, "error": error, "probes_version": PROBES_VERSION,
                                "launch_command": server.launch_command if server else ""})

    def run(self, server) -> None:
        from gaplab.load import run_sync

        try:
            self.findings = run_sync(lambda: probe(server, server.api_key))
        except Exception as exc:  # a probe that breaks is a finding about the server, stored like one
            self.findings = [Finding(BROKEN[1], FAIL, f"{type(exc).__name__}: {exc}"[:300], "the probes")]
            self._write(server, [f.row() for f in self.findings], "failed", self.findings[0].evidence)
            return
        self._write(server, [f.row() for f in self.findings], "complete")

    def fail(self, error: str) -> None:
        self.findings = [Finding(BROKEN[0], FAIL, error[:300], "start the server")]
        self._write(None, [f.row() for f in self.findings], "failed", error)


def probe_key(cell) -> str:
    """What a probe run is keyed by: the server (runtime and its flags, model, quant), not the load."""
    from gaplab.scenario import stable_key

    ident = cell.identity()
    return "capability-" + stable_key({"probes": PROBES_VERSION, **{k: ident[k] for k in
                                                                    ("runtime", "kind", "flags", "model", "quant")}})


def servers_to_probe(cells: list, every_model: bool = False, runtimes: list[str] | None = None) -> list:
    """One cell per server to probe: per runtime, its first chat model at its first quant (what a
    runtime can do depends on how it was launched far more than on the weights), or every server."""
    picked: dict[str, object] = {}

    def order(c) -> tuple:  # chat models first, each at the first of its quants as the scenario lists them
        quants = c.runtime.quants or c.model.quants
        return c.model.api != "chat", quants.index(c.quant) if c.quant in quants else 0

    for cell in sorted(cells, key=order):
        if runtimes and cell.runtime.name not in runtimes:
            continue
        key = cell.server_key if every_model else cell.runtime.name
        picked.setdefault(key, cell)
    return list(picked.values())


def measure(scenario: str | Path, raw_dir: Path, force: bool = False, every_model: bool = False,
            runtimes: list[str] | None = None) -> tuple[list[tuple[str, list[Finding]]], int]:
    """Probe the scenario's servers not yet probed on this machine (all of them with force);
    returns (server, findings) per server probed and how many were skipped."""
    from tqdm import tqdm

    from gaplab import store
    from gaplab.hardware import machine_id
    from gaplab.scenario import load_scenario
    from gaplab.sessions import Sessions

    import polars as pl

    sc = load_scenario(scenario)
    unknown = sorted(set(runtimes or []) - {r.name for r in sc.runtimes})
    if unknown:
        raise ValueError(f"--runtime: {unknown[0]!r} is not a runtime of {sc.name}; "
                         f"it has {', '.join(r.name for r in sc.runtimes)}")
    done = store.read_table(raw_dir, "capability").filter(  # a run that failed is probed again
        (pl.col("machine_id") == machine_id()) & ~pl.col("capability").is_in(BROKEN))
    done = set() if force else set(done["cell_key"].to_list())
    todo = [c for c in servers_to_probe(sc.cells(), every_model, runtimes) if probe_key(c) not in done]
    skipped = len(servers_to_probe(sc.cells(), every_model, runtimes)) - len(todo)
    out = []
    with Sessions() as sessions, tqdm(total=len(todo), desc="capabilities", unit="server",
                                      disable=not todo) as bar:
        for cell in todo:
            bar.set_postfix_str(cell.server_key)
            probing = Probing(cell, raw_dir)
            sessions.serve(cell, [probing])
            out.append((cell.server_key, probing.findings))
            bar.update()
    return out, skipped
