"""Prompt sets. Each request gets its own prompt, so a server's prefix cache cannot
turn later requests' prefill into a no-op."""

from __future__ import annotations

import random

from gaplab.scenario import WorkloadSpec

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


def make_prompt(spec: WorkloadSpec, seed: int, salt: str, index: int) -> str:
    """Prompt `index` of a run, about spec.prompt_tokens tokens; the server's count is stored.

    salt (the cell key and trial) makes each trial's prompts its own: a server kept up across
    cells and trials would otherwise find earlier prompts in its cache.
    """
    rng = random.Random(f"{seed}:{spec.name}:{salt}:{index}")
    return " ".join(rng.choices(WORDS, k=spec.prompt_tokens))
