"""Workload kinds of a scenario: which requests a cell sends. Checked when the scenario is
loaded (a wrong value stops it in one line); gaplab.measure.prompts turns a spec into requests.

Kinds: fixed, distribution (drawn lengths), shared-prefix (what a prefix cache buys),
long-prompt-mix (head-of-line blocking), multi-turn (prefix reuse across turns), file (JSONL).
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from gaplab.spec import jsonl

MAX_TOKENS = 131072
Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]


def one_of(value: str, allowed) -> str:
    """A field validator's check: value, if allowed holds it, else the one line a user reads."""
    if value not in allowed:
        raise ValueError(f"input should be one of {', '.join(allowed)}")
    return value


class Strict(BaseModel):
    """The base of every scenario model (here, since scenario imports this module): an unknown
    field is refused, and a loaded scenario cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# What each dist needs, and what else it may take (min and max clip normal and lognormal)
_PARAMS = {"fixed": ({"value"}, set()), "uniform": ({"min", "max"}, set()),
           "normal": ({"mean", "sd"}, {"min", "max"}), "lognormal": ({"mean", "sd"}, {"min", "max"})}


class LengthSpec(Strict):
    """A distribution of token lengths. mean and sd are those of the lengths themselves (for
    lognormal too, not of their log); draws are rounded and clipped to [min, max]."""

    dist: Literal["fixed", "uniform", "normal", "lognormal"]
    value: Tokens | None = None
    min: Tokens = 1
    max: Tokens = MAX_TOKENS
    mean: float | None = Field(None, gt=0, allow_inf_nan=False)
    sd: float | None = Field(None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _fits(self) -> "LengthSpec":
        needs, may = _PARAMS[self.dist]
        given = self.model_fields_set - {"dist"}
        if needs - given:
            raise ValueError(f"{min(needs - given)}: dist '{self.dist}' needs {' and '.join(sorted(needs))}")
        if given - needs - may:
            raise ValueError(f"{min(given - needs - may)}: not a parameter of dist '{self.dist}', which takes "
                             f"{', '.join(sorted(needs | may))}")
        if self.min > self.max:
            raise ValueError(f"min: got {self.min}; it must be at most max ({self.max})")
        if self.dist == "lognormal" and self.sd == 0:
            raise ValueError("sd: got 0; a lognormal needs sd > 0 (dist fixed gives one length)")
        if self.mean is not None and not self.min <= self.mean <= self.max:
            raise ValueError(f"mean: got {self.mean:g}; it must be within min and max ({self.min} to {self.max})")
        return self

    def draw(self, rng: random.Random) -> int:
        if self.dist == "fixed":
            assert self.value is not None  # _fits: dist fixed has its value
            return self.value
        if self.dist == "uniform":
            return rng.randint(self.min, self.max)
        assert self.mean is not None and self.sd is not None  # _fits: normal and lognormal have both
        if self.dist == "normal":
            x = rng.gauss(self.mean, self.sd)
        else:  # the log's mu and sigma that give the lengths this mean and sd
            s2 = math.log1p((self.sd / self.mean) ** 2)
            x = rng.lognormvariate(math.log(self.mean) - s2 / 2, math.sqrt(s2))
        return min(self.max, max(self.min, round(x)))


def _at_most(tokens: int, what: str, fix: str) -> None:
    if tokens > MAX_TOKENS:
        raise ValueError(f"{what} is {tokens} tokens, more than {MAX_TOKENS}; {fix}")


def levels(v: list[int] | list[float] | None, below: str, what: str) -> None:
    """Check load levels (users or rates): each above 0, none twice."""
    bad = [x for x in v or [] if not x > 0]
    if bad:
        raise ValueError(f"got {bad[0]:g}; {below}")
    if v and len(set(v)) != len(v):
        raise ValueError(f"{what} must be distinct")


class _WorkloadBase(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    seed: int | None = None  # None: the scenario's seed
    # The load levels this workload is measured at, instead of load.concurrency / load.rates
    # (naming either replaces both): e.g. a rate sweep for one workload, 4 users for another.
    concurrency: list[int] | None = None
    rates: list[float] | None = None

    @field_validator("concurrency")
    @classmethod
    def _users(cls, v):
        levels(v, "every concurrency level must be 1 or more", "concurrency levels")
        return v

    @field_validator("rates")
    @classmethod
    def _rates(cls, v):
        levels(v, "a rate is requests per second, above 0", "rates")
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)
        for unset in ("seed", "concurrency", "rates"):  # cell keys stay what they were
            if isinstance(out, dict) and out.get(unset) is None:
                out.pop(unset, None)
        return out


class FixedWorkload(_WorkloadBase):
    kind: Literal["fixed"] = "fixed"
    prompt_tokens: Tokens
    output_tokens: Tokens


class DistributionWorkload(_WorkloadBase):
    """Each request's prompt and output lengths drawn (e.g. chat-like: lognormal)."""

    kind: Literal["distribution"] = "distribution"
    prompt: LengthSpec
    output: LengthSpec


class SharedPrefixWorkload(_WorkloadBase):
    """Requests of a trial share a prefix (request i uses prefix i % prefixes) and differ after it."""

    kind: Literal["shared-prefix"] = "shared-prefix"
    prefix_tokens: Tokens
    suffix_tokens: Tokens
    output_tokens: Tokens
    prefixes: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _fits(self) -> "SharedPrefixWorkload":
        _at_most(self.prefix_tokens + self.suffix_tokens, "prefix_tokens + suffix_tokens", "shorten them")
        return self


class LongPromptMixWorkload(_WorkloadBase):
    """Short requests with a long one every long_every (request i is long when i % long_every == 0)."""

    kind: Literal["long-prompt-mix"] = "long-prompt-mix"
    short_prompt_tokens: Tokens
    long_prompt_tokens: Tokens
    long_every: int = Field(ge=2)
    output_tokens: Tokens

    @model_validator(mode="after")
    def _longer(self) -> "LongPromptMixWorkload":
        if self.long_prompt_tokens <= self.short_prompt_tokens:
            raise ValueError(f"long_prompt_tokens: got {self.long_prompt_tokens}; it must be more than "
                             f"short_prompt_tokens ({self.short_prompt_tokens})")
        return self


class MultiTurnWorkload(_WorkloadBase):
    """Conversations of `turns` requests; each resends the earlier turns (gaplab-written answers
    of output_tokens words) plus a new user message."""

    kind: Literal["multi-turn"] = "multi-turn"
    turns: int = Field(ge=2)
    first_prompt_tokens: Tokens
    turn_prompt_tokens: Tokens
    output_tokens: Tokens

    @model_validator(mode="after")
    def _fits(self) -> "MultiTurnWorkload":
        last = self.first_prompt_tokens + (self.turns - 1) * (self.turn_prompt_tokens + self.output_tokens)
        _at_most(last + self.output_tokens, "turns: the last turn with its answer", "use fewer or shorter turns")
        return self


_LINE = ("each line must be a JSON object with prompt (a string) or messages (a list of {role, content}), "
         "and optionally output_tokens")
_ROLES = ("system", "user", "assistant")


def _entry(obj: dict, where: str) -> tuple[str | list[dict], int | None]:
    unknown = sorted(set(obj) - {"prompt", "messages", "output_tokens"})
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; {_LINE}")
    if ("prompt" in obj) == ("messages" in obj):
        raise ValueError(f"{where}: needs prompt or messages, one of them; {_LINE}")
    prompt = obj.get("prompt", obj.get("messages"))
    if "prompt" in obj and not (isinstance(prompt, str) and prompt):
        raise ValueError(f"{where}: prompt: got {prompt!r}; it must be a non-empty string")
    if "messages" in obj and not (isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in _ROLES
            and isinstance(m["content"], str) for m in prompt)):
        raise ValueError(f"{where}: messages: must be a non-empty list of {{role, content}}, role one of "
                         f"{', '.join(_ROLES)}, content a string")
    out = obj.get("output_tokens")
    if out is not None and not (type(out) is int and 1 <= out <= MAX_TOKENS):
        raise ValueError(f"{where}: output_tokens: got {out!r}; it must be an integer from 1 to {MAX_TOKENS}")
    assert isinstance(prompt, str | list)  # checked above: one of the two
    return prompt, out


def read_prompts(file: Path) -> tuple[list[tuple[str | list[dict], int | None]], str]:
    """A prompt file's (prompt, output_tokens or None) per non-blank line, and its sha256."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{file}: no such file (a relative path is read from the scenario file's folder)") from None
    except OSError as exc:
        raise ValueError(f"{file}: cannot read it ({exc.strerror}); path must name a JSONL file") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not UTF-8 text; {_LINE}") from None
    entries = [_entry(obj, where) for where, _, obj in jsonl.objects(text, file, _LINE)]
    if not entries:
        raise ValueError(f"{file}: no prompts in it; {_LINE}")
    return entries, hashlib.sha256(data).hexdigest()


class FileWorkload(_WorkloadBase):
    """Prompts from a JSONL file, request i from line i % lines (blank lines skipped)."""

    kind: Literal["file"] = "file"
    path: str  # a relative path is read from the scenario file's folder
    output_tokens: Tokens = 128  # for lines without their own
    sha256: str | None = None  # of the file, filled on load: a changed file makes new cells
    _entries: list = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _read(cls, data, handler, info: ValidationInfo):
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            return handler(data)  # a spec already read, or a path the field itself refuses
        file = Path((info.context or {}).get("base_dir", ".")) / data["path"]
        entries, digest = read_prompts(file)
        if data.get("sha256") not in (None, digest):
            raise ValueError(f"sha256: {file} has sha256 {digest}, not the one given; remove sha256 or "
                             "restore the file")
        spec = handler({**data, "sha256": digest})
        spec._entries = entries
        return spec

    @property
    def entries(self) -> list[tuple[str | list[dict], int | None]]:
        return self._entries


def _kind(v) -> str:
    kind = v.get("kind", "fixed") if isinstance(v, dict) else getattr(v, "kind", "fixed")
    return kind if isinstance(kind, str) else repr(kind)


# A scenario's workload; kind picks the class, and is "fixed" when left out (older files).
WorkloadSpec = Annotated[Union[
    Annotated[FixedWorkload, Tag("fixed")],
    Annotated[DistributionWorkload, Tag("distribution")],
    Annotated[SharedPrefixWorkload, Tag("shared-prefix")],
    Annotated[LongPromptMixWorkload, Tag("long-prompt-mix")],
    Annotated[MultiTurnWorkload, Tag("multi-turn")],
    Annotated[FileWorkload, Tag("file")],
], Discriminator(_kind)]
WORKLOAD_KINDS = ("fixed", "distribution", "shared-prefix", "long-prompt-mix", "multi-turn", "file")
