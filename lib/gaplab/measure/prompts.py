"""Requests of a workload. Each trial's prompts are its own (salted), so a server's prefix
cache holds nothing from earlier trials; within a trial only the kinds meant to (shared-prefix,
multi-turn) share text."""

from __future__ import annotations

import random
from dataclasses import dataclass

from gaplab.spec.scenario import WorkloadSpec
from gaplab.spec.workloads import FixedWorkload

# Short common words: one token each (with their leading space) in the BPE
# vocabularies of the local models, so the word count tracks the token count.
WORDS = """the of and to in is was for on that with as by at from his her it an are were be this
which or had not but have they one all their has been there can more when who will would no out
so said what up its about into than them only other new some could time these two may then do
first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go
came right used take three""".split()


def make_prompt(spec: FixedWorkload, seed: int, salt: str, index: int) -> str:
    """Prompt `index` of a run, about spec.prompt_tokens tokens; the server's count is stored.

    salt (the cell key and trial) makes each trial's prompts its own: a server kept up across
    cells and trials would otherwise find earlier prompts in its cache.
    """
    rng = random.Random(f"{seed}:{spec.name}:{salt}:{index}")
    return " ".join(rng.choices(WORDS, k=spec.prompt_tokens))


@dataclass(frozen=True)
class Request:
    prompt: str | list[dict]   # text, or chat messages
    output_tokens: int         # max_tokens for this request
    prompt_tokens: int | None  # the length gaplab aimed for (words ~ tokens); None when unknown (file prompts)
    tag: str                   # the request's class for the report: "fixed", "short", "long",
    #                            "turn-1".., "shared", "drawn", "file"


def _words(key: str, n: int) -> str:
    return " ".join(random.Random(key).choices(WORDS, k=n))


def request(spec: WorkloadSpec, seed: int, salt: str, index: int, user: int = 0, seq: int = 0) -> Request:
    """Request `index` of a trial; the same arguments give the same request.

    seed: the scenario's (spec.seed wins when set). salt: as for make_prompt. user and seq (this
    user's seq-th request) place a multi-turn request: conversation seq // turns, turn seq % turns.
    """
    seed = seed if spec.seed is None else spec.seed
    key = f"{seed}:{spec.name}:{salt}"
    if spec.kind == "fixed":
        return Request(make_prompt(spec, seed, salt, index), spec.output_tokens, spec.prompt_tokens, "fixed")
    if spec.kind == "distribution":
        # lengths leave the salt out: every cell and trial gets the same lengths, only the words differ
        lengths = random.Random(f"{seed}:{spec.name}:lengths:{index}")
        n, out = spec.prompt.draw(lengths), spec.output.draw(lengths)
        return Request(_words(f"{key}:{index}", n), out, n, "drawn")
    if spec.kind == "shared-prefix":
        prefix = _words(f"{key}:prefix:{index % spec.prefixes}", spec.prefix_tokens)
        return Request(f"{prefix} {_words(f'{key}:{index}', spec.suffix_tokens)}", spec.output_tokens,
                       spec.prefix_tokens + spec.suffix_tokens, "shared")
    if spec.kind == "long-prompt-mix":
        long = index % spec.long_every == 0
        n = spec.long_prompt_tokens if long else spec.short_prompt_tokens
        return Request(_words(f"{key}:{index}", n), spec.output_tokens, n, "long" if long else "short")
    if spec.kind == "multi-turn":
        conv, turn = divmod(seq, spec.turns)
        messages = []
        for t in range(turn + 1):
            n = spec.first_prompt_tokens if t == 0 else spec.turn_prompt_tokens
            messages.append({"role": "user", "content": _words(f"{key}:{user}:{conv}:{t}:user", n)})
            if t < turn:  # gaplab writes the answers, so the resent history is the same on every server
                messages.append({"role": "assistant",
                                 "content": _words(f"{key}:{user}:{conv}:{t}:answer", spec.output_tokens)})
        n = spec.first_prompt_tokens + turn * (spec.turn_prompt_tokens + spec.output_tokens)
        return Request(messages, spec.output_tokens, n, f"turn-{turn + 1}")
    if spec.kind == "file":  # the file's own text, as written: not salted
        prompt, tokens = spec.entries[index % len(spec.entries)]
        return Request(prompt, tokens or spec.output_tokens, None, "file")
    raise ValueError(f"kind: got {spec.kind!r}; no requests for it")
