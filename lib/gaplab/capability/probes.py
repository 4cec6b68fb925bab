"""The capability probes: real requests to a running server, judged by judges.py, stored as
one capability run per server (`gaplab capabilities`, run by `make report` after the sweep).

Streams go through the same client the sweep measures with: the overlap and forced-length
probes in the runtime's own protocol, the usage probe on its OpenAI-compatible API (the
field users ask for there); the other calls are plain JSON requests to that API.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timezone
from pathlib import Path

from gaplab.capability.judges import (
    ANSWER_TOKENS,
    BROKEN,
    FAIL,
    FORCED_TOKENS,
    OVERLAP_STREAMS,
    PREFIX_PAIRS,
    PREFIX_WORDS,
    SCHEMA,
    TOOL,
    Finding,
    judge_forced_length,
    judge_json_schema,
    judge_logprobs,
    judge_models,
    judge_overlap,
    judge_prefix_cache,
    judge_tool_call,
    judge_usage,
)
from gaplab.measure.client import StreamClient
from gaplab.measure.prompts import WORDS
from gaplab.measure.records import RequestRecord

PROBES_VERSION = 2  # part of each probe run's cell key: a new version probes again
TIMEOUT = 300.0  # vLLM's CPU build compiles a grammar on the first constrained request
FORCING = ("ignore_eos", "min_tokens")  # request fields that make a runtime ignore the end of text


async def probe(server, api_key: str | None = None, salt: str = "") -> list[Finding]:
    """Every probe against one server, one after another (the overlap probe's streams at once).
    salt makes the long prompts this run's own, so a server kept up finds none of them cached."""
    model, extra = server.served_model, server.extra_body
    free = {k: v for k, v in extra.items() if k not in FORCING}
    words = random.Random(f"capability:{model}:{salt}")

    async with StreamClient(server.base_url, "chat", api_key, TIMEOUT, server.protocol) as native, \
            StreamClient(server.openai_url, "chat", api_key, TIMEOUT) as api:
        async def stream(client: StreamClient, prompt: str, n: int, body_extra: dict) -> RequestRecord:
            rec = RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0)
            return await client.stream(client.body(prompt, n, model, body_extra), rec)

        async def ask(content: str, **fields) -> tuple[int | None, dict | list | str, float]:
            return await api.call("POST", "chat/completions", {
                "model": model, "temperature": 0, "messages": [{"role": "user", "content": content}], **fields})

        found = [judge_usage(await stream(api, "Count from one to ten.", 16, free))]
        one_word = "Reply with the single word OK."
        forced = await stream(native, one_word, FORCED_TOKENS, extra)
        found.append(judge_forced_length(forced, await stream(native, one_word, FORCED_TOKENS, free)
                                         if free != extra else None))
        # 64 tokens each: with a core busy elsewhere, one run judged vLLM's four 32-token streams as
        # never decoding together (a false fail); longer streams leave the later ones time to join
        recs = await asyncio.gather(*(stream(native, f"Write a short story about the number {i}.", FORCED_TOKENS,
                                             extra) for i in range(OVERLAP_STREAMS)))
        found.append(judge_overlap(list(recs)))
        root = server.openai_url.rstrip("/").removesuffix("/v1")
        props = await api.call("GET", root + "/props")  # llama.cpp's: what its chat template supports
        found.append(judge_tool_call(*(await ask("What is the weather in Paris?", tools=[TOOL],
                                                 tool_choice="required", max_tokens=ANSWER_TOKENS))[:2],
                                     props[1] if props[0] == 200 else None))
        found.append(judge_json_schema(*(await ask(
            "Name a country in Europe and its capital, as JSON.", max_tokens=ANSWER_TOKENS,
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


class Probing:
    """The probes of one server as a sessions.Measurement: stores one capability run."""

    def __init__(self, cell, raw_dir: Path):
        from gaplab.storage import store
        self.cell, self.raw_dir, self.run_id = cell, raw_dir, store.new_run_id()
        self.findings: list[Finding] = []

    def _write(self, server, status: str, error: str | None = None) -> None:
        from gaplab.storage import store
        from gaplab.sweep.servers import run_identity

        ident = run_identity(self.cell, server, self.run_id, cell_id=f"{self.cell.server_key}/capabilities",
                             cell_key=probe_key(self.cell), workload="capability-probe", concurrency=OVERLAP_STREAMS)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        store.write_capability(self.raw_dir, ident, [{**f.row(), "measured_at": stamp} for f in self.findings],
                               {"status": status, "error": error, "probes_version": PROBES_VERSION,
                                "launch_command": server.launch_command if server else ""})

    def run(self, server) -> None:
        from gaplab.measure.loadgen import run_sync

        try:
            self.findings = run_sync(lambda: probe(server, server.api_key, self.run_id))
        except Exception as exc:  # a probe that breaks is a finding about the server, stored like one
            self.findings = [Finding(BROKEN[1], FAIL, f"{type(exc).__name__}: {exc}"[:300], "the probes")]
            self._write(server, "failed", self.findings[0].evidence)
            return
        self._write(server, "complete")

    def fail(self, error: str) -> None:
        self.findings = [Finding(BROKEN[0], FAIL, error[:300], "start the server")]
        self._write(None, "failed", error)


def probe_key(cell) -> str:
    """What a probe run is keyed by: the server (runtime, its flags and, for the runtimes gaplab
    installs, their version; model, quant), not the load."""
    from gaplab.runtimes import kinds
    from gaplab.spec.scenario import stable_key

    ident = cell.identity()
    version = kinds()[cell.runtime.kind].package_version
    return "capability-" + stable_key({"probes": PROBES_VERSION, "version": version, **{
        k: ident[k] for k in ("runtime", "kind", "flags", "model", "quant")}})


def servers_to_probe(cells: list, every_model: bool = False, runtimes: list[str] | None = None) -> list:
    """One cell per server to probe: per runtime, its first chat model at its first quant (what a
    runtime can do depends on how it was launched far more than on the weights), or every server."""
    picked: dict[str, object] = {}

    def order(c) -> tuple:  # chat models first, each at the first of its quants as the scenario lists them
        quants = c.runtime.quants_for(c.model)
        return c.model.api != "chat", quants.index(c.quant) if c.quant in quants else 0

    for cell in sorted(cells, key=order):
        if runtimes and cell.runtime.name not in runtimes:
            continue
        picked.setdefault(cell.server_key if every_model else cell.runtime.name, cell)
    return list(picked.values())


def measure(scenario: str | Path, raw_dir: Path, force: bool = False, every_model: bool = False,
            runtimes: list[str] | None = None) -> tuple[list[tuple[str, list[Finding]]], int]:
    """Probe the scenario's servers not yet probed on this machine (all of them with force);
    returns (server, findings) per server probed and how many were skipped."""
    import polars as pl
    from tqdm import tqdm

    from gaplab.machine.hardware import machine_id
    from gaplab.spec.scenario import load_scenario
    from gaplab.storage import store
    from gaplab.sweep.servers import ServerPool

    sc = load_scenario(scenario)
    unknown = sorted(set(runtimes or []) - {r.name for r in sc.runtimes})
    if unknown:
        raise ValueError(f"--runtime: {unknown[0]!r} is not a runtime of {sc.name}; "
                         f"it has {', '.join(r.name for r in sc.runtimes)}")
    probed = store.read_table(raw_dir, "capability").filter(  # a run that could not probe is probed again
        (pl.col("machine_id") == machine_id()) & ~pl.col("capability").is_in(BROKEN))
    done = set() if force else set(probed["cell_key"].to_list())
    servers = servers_to_probe(sc.cells(), every_model, runtimes)
    todo = [c for c in servers if probe_key(c) not in done]
    out = []
    with ServerPool() as server_pool, tqdm(total=len(todo), desc="capabilities", unit="server", disable=not todo) as bar:
        for cell in todo:
            bar.set_postfix_str(cell.server_key)
            probing = Probing(cell, raw_dir)
            server_pool.serve(cell, [probing])
            out.append((cell.server_key, probing.findings))
            bar.update()
    return out, len(servers) - len(todo)
