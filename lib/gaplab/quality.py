"""Output quality: what each quant and each runtime costs, keyed like the speed data.

Three measurements, stored as rows that carry the speed tables' run identity
(store.IDENTITY), so quality joins speed and file size on hardware, runtime, model, quant:

- fidelity: `llama-perplexity` scores the evaluation text with the highest-precision
  file of a model and saves its token distributions; every other quant is then compared
  with them: perplexity, mean KL divergence, top-1 token agreement ("same top p").
- task accuracy: a question set with checkable answers, sent through a runtime's
  OpenAI-compatible API at temperature 0 (any runtime the sweep can drive).
- agreement: the same questions through two runtime cells of one model and quant
  (llama.cpp with 8 slots vs 1 slot by default); derived from the stored answers.

The evaluation text is the Jargon File 4.4.7 (public domain) from Debian's `jargon-text`
package, fetched with `apt-get download`, pinned by version and sha256. The question set
ships in data/eval/ and is made by `make_eval_set` with a fixed seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from gaplab import local
from gaplab.config import CACHE_DIR, RAW_DIR, ROOT
from gaplab.local import SetupError
from gaplab.scenario import stable_key

if TYPE_CHECKING:
    from gaplab.scenario import Cell

QUALITY_DIR = CACHE_DIR / "quality"  # the evaluation text and the (large, temporary) logits files
EVAL_DIR = ROOT / "data" / "eval"  # the shipped question set lives with the code, not under GAPLAB_DATA_DIR

# llama-perplexity: 4 chunks of 512 tokens score 4 x 255 tokens (the second half of each
# chunk, so every scored token has 256 tokens of context). Gemma's 262k vocabulary makes
# the saved distributions 134 MB per chunk; more chunks narrow the intervals and cost time.
CHUNKS = 4
CTX = 512
TOOL_THREADS = os.cpu_count() or 1  # nothing else runs while llama-perplexity does (2 here)


# ---------------------------------------------------------------- the evaluation text


@dataclass(frozen=True)
class TextSource:
    name: str
    package: str  # Debian binary package, fetched with `apt-get download`
    version: str
    deb_sha256: str
    member: str  # gzipped text inside the package's data.tar
    text_sha256: str  # of that text, unzipped
    sections: tuple[tuple[str, str], ...]  # (heading that starts a section, line that ends it)
    sha256: str  # of the excerpt gaplab scores
    license: str
    citation: str


EVAL_TEXT = TextSource(
    name="jargon-file-4.4.7-prose",
    package="jargon-text", version="4.4.7-4.1",
    deb_sha256="17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
    member="./usr/share/doc/jargon-text/jargon.txt.gz",
    text_sha256="40dfb4b98191a670a09a183d5798d50f243d23fdbd1495dcc0aca2ce5895ba97",
    # The prose parts: chapters 1-12 and appendices A-C (the lexicon itself is left out).
    sections=(("Chapter 1. Hacker Slang and Hacker Culture", "Part II. The Jargon Lexicon"),
              ("Appendix A. Hacker Folklore", "Bibliography")),
    sha256="8e9dbc2cd6df6c66fed3defd1dc9963861704a45b95fdfa65a98dad2268276f8",
    license="public domain (Debian's copyright file for jargon-text: \"This document (the Jargon File) "
            "is in the public domain, to be freely used, shared, and modified\")",
    citation="The Jargon File, version 4.4.7, 29 Dec 2003, ed. Eric S. Raymond",
)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _deb_member(deb: Path, member: str) -> bytes:
    """One file out of a .deb (an ar archive holding data.tar.*), without dpkg."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise SetupError(f"{deb}: not a Debian package (no ar header); delete it and retry")
    pos = 8
    while pos + 60 <= len(raw):
        name = raw[pos:pos + 16].decode().strip().rstrip("/")
        size = int(raw[pos + 48:pos + 58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are padded to an even offset
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                f = tar.extractfile(member)
                if f is None:
                    raise SetupError(f"{deb}: {member} is not a regular file")
                return f.read()
    raise SetupError(f"{deb}: no data.tar member; delete it and retry")


def _apt_download(src: TextSource) -> Path:
    """The pinned .deb, from the cache or from Debian's archive (apt-get checks its signature)."""
    dest = CACHE_DIR / "downloads" / f"{src.package}_{src.version}_all.deb"
    if dest.exists() and local._sha256(dest) == src.deb_sha256:
        return dest
    if not shutil.which("apt-get"):
        raise SetupError(f"the evaluation text is Debian's {src.package} {src.version} package and apt-get is "
                         f"not installed here; copy {dest.name} into {dest.parent} and retry")
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"gaplab: downloading {src.package}={src.version} from Debian (the evaluation text)", flush=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = ["apt-get", "download", f"{src.package}={src.version}"]
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if res.returncode != 0 and os.geteuid() == 0:  # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        got = list(Path(tmp).glob("*.deb"))
        if res.returncode != 0 or not got:
            why = (res.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise SetupError(f"apt-get could not download {src.package}={src.version} ({why}); "
                             "run 'apt-get update' and retry")
        digest = local._sha256(got[0])
        if digest != src.deb_sha256:
            raise SetupError(f"{got[0].name} has sha256 {digest}, expected {src.deb_sha256} (pinned)")
        got[0].rename(dest)
    return dest


def _excerpt(text: str, sections: tuple[tuple[str, str], ...]) -> str:
    lines = text.split("\n")

    def norm(line: str) -> str:  # the file writes some headings with no-break spaces
        return " ".join(line.split())

    out: list[str] = []
    for start, end in sections:
        # a heading starts at column 0; the table of contents repeats it indented
        i = next((k for k, s in enumerate(lines) if s[:1].strip() and norm(s) == start), None)
        j = next((k for k in range(i + 1, len(lines)) if norm(lines[k]) == end), None) if i is not None else None
        if i is None or j is None:
            raise SetupError(f"evaluation text: section {start!r} .. {end!r} not found")
        out += [s.rstrip() for s in lines[i:j]]
    return "\n".join(out).strip() + "\n"


def eval_text(src: TextSource = EVAL_TEXT) -> Path:
    """The evaluation text as a plain file in the cache, checked against its pinned sha256."""
    target = QUALITY_DIR / f"{src.name}.txt"
    if target.exists() and local._sha256(target) == src.sha256:
        return target
    deb = _apt_download(src)
    full = gzip.decompress(_deb_member(deb, src.member))
    if _sha256_bytes(full) != src.text_sha256:
        raise SetupError(f"{deb.name}: {src.member} has sha256 {_sha256_bytes(full)}, expected {src.text_sha256}")
    excerpt = _excerpt(full.decode("utf-8"), src.sections).encode()
    if _sha256_bytes(excerpt) != src.sha256:
        raise SetupError(f"evaluation text excerpt has sha256 {_sha256_bytes(excerpt)}, expected {src.sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(excerpt)
    tmp.rename(target)
    target.with_suffix(".json").write_text(json.dumps(asdict(src), indent=1))
    return target


# ---------------------------------------------------------------- llama-perplexity


class ToolOutputError(RuntimeError):
    """llama-perplexity did not print what gaplab reads: its format changed, or the run failed."""


_NUM = r"(-?(?:\d+(?:\.\d*)?|nan|inf))"
_PM = r"\s*(?:±|\+/-)\s*"
# label in the output -> (metric, has a ± value)
KLD_LINES = {
    "Mean PPL(Q)": ("perplexity", True),
    "Mean PPL(base)": ("perplexity_base", True),
    "Mean PPL(Q)/PPL(base)": ("ppl_ratio", True),
    "Mean    KLD": ("kld_mean", True),
    "99.0%   KLD": ("kld_p99", False),
    "RMS Δp": ("rms_dp_pct", True),
    "Same top p": ("top1_agreement_pct", True),
}


def _tail(out: str, n: int = 2) -> str:
    lines = [s.strip() for s in out.strip().splitlines() if s.strip()]
    return " | ".join(lines[-n:])[-300:]


def _value(out: str, label: str, with_pm: bool) -> tuple[float, float | None]:
    pattern = re.escape(label) + r"\s*:\s*" + _NUM + (_PM + _NUM if with_pm else "")
    m = re.search(pattern, out)
    if not m:
        raise ToolOutputError(f"llama-perplexity printed no '{label}' line: its output format changed or the "
                              f"run failed; last lines: {_tail(out)}")
    value = float(m.group(1))
    unc = float(m.group(2)) if with_pm else None
    if not math.isfinite(value):
        raise ToolOutputError(f"llama-perplexity printed {m.group(0).strip()!r}: not a finite number")
    if unc is not None and not math.isfinite(unc):
        unc = None  # a file against itself has zero variance and prints "± -nan": unknown, not zero
    return value, unc


def _scored_tokens(out: str, what: str) -> int:
    m = re.search(what + r": \w+ (?:perplexity )?over (\d+) chunks, n_ctx=(\d+)", out)
    if not m:
        raise ToolOutputError(f"llama-perplexity printed no '{what}: ... over N chunks, n_ctx=C' line; "
                              f"last lines: {_tail(out)}")
    chunks, ctx = int(m.group(1)), int(m.group(2))
    return chunks * (ctx - 1 - ctx // 2)  # it scores the second half of each chunk


def parse_base(out: str) -> dict[str, tuple[float, float | None]]:
    """The reference run (--kl-divergence-base): its own perplexity, with its ± (one standard error)."""
    if "tokenizes to only" in out:
        raise ToolOutputError(f"the evaluation text is too short for the context size: {_tail(out, 1)}")
    m = re.search(r"Final estimate: PPL = " + _NUM + _PM + _NUM, out)
    if not m:
        raise ToolOutputError("llama-perplexity printed no 'Final estimate: PPL = X +/- Y' line: its output "
                              f"format changed or the run failed; last lines: {_tail(out)}")
    ppl, unc = float(m.group(1)), float(m.group(2))
    if not (math.isfinite(ppl) and ppl > 0):
        raise ToolOutputError(f"llama-perplexity printed {m.group(0)!r}: not a usable perplexity")
    return {"perplexity": (ppl, unc), "n_tokens": (_scored_tokens(out, "perplexity"), None)}


def parse_kld(out: str) -> dict[str, tuple[float, float | None]]:
    """A --kl-divergence run: every figure of KLD_LINES with its ± where printed."""
    res = {metric: _value(out, label, pm) for label, (metric, pm) in KLD_LINES.items()}
    res["n_tokens"] = (_scored_tokens(out, "kl_divergence"), None)
    return res


def perplexity_command(model_file: Path, logits: Path, text: Path | None, chunks: int = CHUNKS,
                       ctx: int = CTX, threads: int = TOOL_THREADS) -> list[str]:
    """text given: score it and save the distributions (the reference); None: compare with them."""
    cmd = [str(local.tool_path("llama-perplexity")), "-m", str(model_file), "-c", str(ctx), "-t", str(threads),
           "--kl-divergence-base", str(logits)]
    if text is not None:
        return cmd + ["-f", str(text), "--chunks", str(chunks)]
    return cmd + ["--kl-divergence"]


def _run_tool(cmd: list[str], timeout: float = 900) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ToolOutputError(f"llama-perplexity took more than {timeout:.0f} s; use fewer --chunks") from None
    out = res.stdout + "\n" + res.stderr
    if res.returncode != 0:
        raise ToolOutputError(f"llama-perplexity exited with code {res.returncode}: {_tail(out)}")
    return out


def reference_quant(model: str, quants: list[str]) -> str:
    """The highest-precision file of a model: the largest one (F32 > F16 > Q8_0 > ... )."""
    return max(quants, key=lambda q: local.model_path(model, q).stat().st_size)


@dataclass
class FidelityResult:
    quant: str
    reference: str
    metrics: dict[str, tuple[float, float | None]]
    command: str
    seconds: float


def fidelity(model: str, quants: list[str], reference: str | None = None, text: Path | None = None,
             chunks: int = CHUNKS, ctx: int = CTX, self_check: bool = False, on_step=None) -> list[FidelityResult]:
    """Score every quant of one local model against its highest-precision file.

    quants may lack the reference: it is scored first all the same, since the others need
    its saved distributions. self_check also compares the reference with itself (KLD ~ 0).
    The distributions file (n_vocab x scored tokens x 2 bytes) is deleted at the end.
    """
    for q in quants + ([reference] if reference else []):
        if not local.model_path(model, q).exists():
            raise SetupError(f"model {model} {q} is not provisioned: run 'gaplab local setup --model {model}'")
    if not local.llama_built():
        raise SetupError("llama-perplexity is not built: run 'gaplab local setup'")
    reference = reference or reference_quant(model, quants)
    text = text or eval_text()
    QUALITY_DIR.mkdir(parents=True, exist_ok=True)
    logits = QUALITY_DIR / f"{model}-{reference}-{os.getpid()}.logits"
    results = []
    try:
        cmd = perplexity_command(local.model_path(model, reference), logits, text, chunks, ctx)
        t0 = time.monotonic()
        base = parse_base(_run_tool(cmd))
        if reference in quants and not self_check:
            results.append(FidelityResult(reference, reference, base, " ".join(cmd), time.monotonic() - t0))
        if on_step:
            on_step(reference)
        for q in quants:
            if q == reference and not self_check:
                continue
            cmd = perplexity_command(local.model_path(model, q), logits, None, chunks, ctx)
            t0 = time.monotonic()
            res = parse_kld(_run_tool(cmd))
            if abs(res["perplexity_base"][0] - base["perplexity"][0]) > 1e-3 * base["perplexity"][0]:
                # both runs scored the same tokens; a mismatch means the file was not the one we wrote
                raise ToolOutputError(f"{model} {q}: reference perplexity {res['perplexity_base'][0]} differs "
                                      f"from the reference run's {base['perplexity'][0]}")
            results.append(FidelityResult(q, reference, res, " ".join(cmd), time.monotonic() - t0))
            if on_step:
                on_step(q)
    finally:
        logits.unlink(missing_ok=True)
    return results


# ---------------------------------------------------------------- the question set


class EvalSetError(ValueError):
    """A malformed evaluation file; the message names the file and line."""


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    tolerance: float | None = None  # numeric answers: accepted absolute difference
    kind: str = ""

    @property
    def scoring(self) -> str:
        if self.choices:
            return "choice"
        return "numeric" if _number(self.answer) is not None else "exact"

    def prompt_text(self) -> str:
        if not self.choices:
            return self.question
        return self.question + " " + " ".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(self.choices))


LETTERS = "ABCDEFGHIJ"
EVAL_SEED = 0
EVAL_NAME = f"gaplab-basic-seed{EVAL_SEED}"
EVAL_SET = EVAL_DIR / f"{EVAL_NAME}.jsonl"
EVAL_SIZE = 200

UNITS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("kilograms", "grams", 1000), ("days", "hours", 24),
         ("feet", "inches", 12), ("weeks", "days", 7), ("liters", "milliliters", 1000), ("dollars", "cents", 100)]

# Shown before every question (the generator never asks these). Short on purpose: Gemma 3's
# sliding-window attention keeps llama-server from reusing a cached prefix, so every token of
# the examples is processed again for every question.
FEW_SHOT = [("What is 14 + 23?", "37"),
            ("Which number is the smallest? A) 41 B) 17 C) 88 D) 29", "B")]
PROMPT_VERSION = 3  # part of every task cell key: change it when the prompt changes
MAX_TOKENS = 8


def _item(kind: str, rng: random.Random) -> dict:
    if kind == "add1":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return {"question": f"What is {a} + {b}?", "answer": str(a + b)}
    if kind == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return {"question": f"What is {a} + {b}?", "answer": str(a + b)}
    if kind == "subtract":
        a = rng.randint(2, 20)
        b = rng.randint(1, a - 1)
        return {"question": f"What is {a} - {b}?", "answer": str(a - b)}
    if kind == "multiply":
        a, b = rng.randint(2, 10), rng.randint(2, 10)
        return {"question": f"What is {a} times {b}?", "answer": str(a * b)}
    if kind == "next":
        n = rng.randint(1, 98)
        return {"question": f"What number comes right after {n}?", "answer": str(n + 1)}
    if kind == "convert":
        big, small, factor = rng.choice(UNITS)
        if rng.random() < 0.75:
            n = rng.randint(2, 9)
            return {"question": f"How many {small} are in {n} {big}?", "answer": str(n * factor)}
        half = rng.randint(1, 9) * 2 + 1  # an odd number of halves: the answer ends in .5
        return {"question": f"How many {big} are in {half * factor // 2} {small}?", "answer": f"{half / 2:g}",
                "tolerance": 0.01}
    if kind == "choice":
        nums = rng.sample(range(1, 100), 4)
        word, pick = rng.choice([("largest", max), ("smallest", min)])
        return {"question": f"Which number is the {word}?", "choices": [str(n) for n in nums],
                "answer": LETTERS[nums.index(pick(nums))]}
    if kind == "letter":
        i = rng.randint(1, 24)
        side, step = rng.choice([("after", 1), ("before", -1)])
        return {"question": f"Which letter comes right {side} {chr(65 + i)} in the English alphabet?",
                "answer": chr(65 + i + step)}
    raise ValueError(kind)


# One kind in turn, easy to harder: models of 135M to 270M parameters sit near the floor on
# two-digit sums, so the single-digit kinds keep some signal to compare quants with.
KINDS = ["add1", "next", "letter", "choice", "subtract", "multiply", "convert", "add"]


def make_eval_set(seed: int = EVAL_SEED, n: int = EVAL_SIZE) -> list[dict]:
    """n distinct questions with exact answers, the kinds in turn; the same seed gives the same set."""
    rng = random.Random(seed)
    asked = {q for q, _ in FEW_SHOT}
    out: list[dict] = []
    for _ in range(100 * n):  # bounded: a kind with few distinct questions cannot loop forever
        if len(out) == n:
            break
        kind = KINDS[len(out) % len(KINDS)]
        item = _item(kind, rng)
        text = Item(id="", question=item["question"], answer=item["answer"],
                    choices=tuple(item.get("choices", ()))).prompt_text()
        if text in asked:
            continue
        asked.add(text)
        out.append({"id": f"s{seed}-{len(out):03d}", "kind": kind, **item})
    if len(out) < n:
        raise ValueError(f"n: only {len(out)} distinct questions could be made, asked for {n}")
    return out


def write_eval_set(path: Path = EVAL_SET, seed: int = EVAL_SEED, n: int = EVAL_SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in make_eval_set(seed, n)))
    return path


def load_eval_set(path: Path | str) -> list[Item]:
    """A JSONL file: one object a line with question, answer, and optional choices, tolerance, id, kind.

    With choices, the answer is a letter (A, B, ...) or the text of one choice.
    """
    path = Path(path)
    if not path.exists():
        raise EvalSetError(f"{path}: no such evaluation file")
    items, seen = [], set()
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalSetError(f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise EvalSetError(f"{where}: each line must be a JSON object with question and answer")
        q, a = obj.get("question"), obj.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise EvalSetError(f"{where}: 'question' must be a non-empty string")
        if isinstance(a, bool) or not isinstance(a, (str, int, float)) or not str(a).strip():
            raise EvalSetError(f"{where}: 'answer' must be a non-empty string or a number")
        choices = obj.get("choices") or []
        if not isinstance(choices, list) or len(choices) == 1 or len(choices) > len(LETTERS) \
                or not all(isinstance(c, (str, int, float)) for c in choices):
            raise EvalSetError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} strings")
        choices = [str(c) for c in choices]
        answer = str(a).strip()
        if choices:
            if answer in choices and answer not in LETTERS[:len(choices)]:
                answer = LETTERS[choices.index(answer)]
            if answer not in LETTERS[:len(choices)]:
                raise EvalSetError(f"{where}: 'answer' must be one of the letters "
                                   f"{LETTERS[:len(choices)]} or the text of one choice")
        tol = obj.get("tolerance")
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0):
            raise EvalSetError(f"{where}: 'tolerance' must be a number of 0 or more")
        item_id = str(obj.get("id") or f"{path.stem}-{no}")
        if item_id in seen:
            raise EvalSetError(f"{where}: id {item_id!r} appears twice")
        seen.add(item_id)
        items.append(Item(id=item_id, question=q.strip(), answer=answer, choices=tuple(choices),
                          tolerance=float(tol) if tol is not None else None, kind=str(obj.get("kind", ""))))
    if not items:
        raise EvalSetError(f"{path}: no questions in the file")
    return items


def _number(text: str, last: bool = False) -> float | None:
    """The first (or last) number in text; thousands separators allowed."""
    found = re.findall(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+", text)
    if not found:
        return None
    try:
        return float(found[-1 if last else 0].replace(",", ""))
    except ValueError:
        return None


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip("\"'`").rstrip(".!").strip()).lower()


def score(item: Item, completion: str) -> tuple[bool, str | None]:
    """(correct, what was read as the answer) for one completion: its first line only.

    choice: the leading letter (or the text of one choice); numeric: the last number, within
    the item's tolerance; exact: the whole line, ignoring case, quotes and a final period.
    """
    text = completion.strip().split("\n")[0].strip()
    if item.scoring == "choice":
        m = re.match(r"^\(?([A-J])\)?(?=$|[\s).:,])", text)
        got = m.group(1) if m else None
        if got is None:  # answered with the text of a choice instead of its letter
            hits = [LETTERS[i] for i, c in enumerate(item.choices) if _norm(c) == _norm(text)]
            got = hits[0] if hits else None
        return got == item.answer, got
    if item.scoring == "numeric":
        got = _number(text, last=True)  # "7 + 8 = 15": the stated result is the last number
        if got is None:
            return False, None
        want = float(item.answer.replace(",", ""))
        tol = item.tolerance if item.tolerance is not None else 1e-9 * max(1.0, abs(want))
        return abs(got - want) <= tol, f"{got:g}"
    return _norm(text) == _norm(item.answer), text


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (stays inside [0, 1], sane at 0 and n)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


# No instruction line: the examples show the format, and with SmolLM2-135M a system message
# did no better than none (4 vs 11 of the first 64 right, both near the floor).
def chat_messages(item: Item) -> list[dict]:
    msgs: list[dict] = []
    for q, a in FEW_SHOT:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": item.prompt_text()}]


def completion_prompt(item: Item) -> str:
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in FEW_SHOT)
    return f"{shots}Question: {item.prompt_text()}\nAnswer:"


# ---------------------------------------------------------------- asking a runtime


@dataclass
class Answer:
    item: Item
    completion: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    latency_ms: float | None = None
    error: str | None = None
    token_ids: list[int] | None = None

    def row(self) -> dict:
        correct, got = score(self.item, self.completion) if self.completion is not None else (False, None)
        return {"item_id": self.item.id, "kind": self.item.kind, "scoring": self.item.scoring,
                "question": self.item.prompt_text(), "expected": self.item.answer, "completion": self.completion,
                "extracted": got, "correct": correct, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "completion_token_ids": self.token_ids,
                "finish_reason": self.finish_reason, "latency_ms": self.latency_ms, "error": self.error}


def task_request(api: str, item: Item) -> dict:
    """The question with its worked examples; the answer ends at its line."""
    body = {"messages": chat_messages(item)} if api == "chat" else {"prompt": completion_prompt(item)}
    return {**body, "stop": ["\n"]}


async def _ask(sdk, api: str, model: str, item: Item, body: dict, max_tokens: int) -> Answer:
    ans = Answer(item)
    t0 = time.perf_counter()
    try:
        common = {"model": model, "max_tokens": max_tokens, "temperature": 0, **body}
        if api == "chat":
            resp = await sdk.chat.completions.create(**common)
            ans.completion = resp.choices[0].message.content or ""
        else:
            resp = await sdk.completions.create(**common)
            ans.completion = resp.choices[0].text or ""
        ans.finish_reason = resp.choices[0].finish_reason
        if resp.usage:
            ans.prompt_tokens, ans.completion_tokens = resp.usage.prompt_tokens, resp.usage.completion_tokens
    except Exception as exc:  # a failed question is a row with its error, never a missing row
        ans.error = f"{type(exc).__name__}: {exc}"[:500]
    ans.latency_ms = (time.perf_counter() - t0) * 1e3
    return ans


async def _tokenize(http, root: str, model: str, text: str) -> list[int] | None:
    """Token ids of a completion, from the server's tokenizer: llama.cpp's /tokenize, else vLLM's."""
    for body in ({"content": text, "add_special": False},
                 {"model": model, "prompt": text, "add_special_tokens": False}):
        try:
            resp = await http.post(root + "/tokenize", json=body)
        except Exception:
            return None
        if resp.status_code == 200:
            tokens = resp.json().get("tokens")
            if isinstance(tokens, list):
                return [t if isinstance(t, int) else t.get("id") for t in tokens]
    return None


async def ask_all(base_url: str, served_model: str, api: str, items: list[Item], concurrency: int = 1,
                  api_key: str | None = None, max_tokens: int = MAX_TOKENS, request=task_request,
                  token_ids: bool = False, timeout: float = 120, on_done=None) -> list[Answer]:
    """Every item through one server at temperature 0, `concurrency` requests in flight; answers in item order.

    request(api, item) makes the request body; token_ids also asks the server to tokenize
    each completion (what agreement between runtimes compares).
    """
    import httpx
    import openai

    sdk = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=0)
    root = base_url.rstrip("/").removesuffix("/v1")
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(item: Item, http) -> Answer:
        async with sem:
            ans = await _ask(sdk, api, served_model, item, request(api, item), max_tokens)
        if ans.completion is not None and token_ids:
            ans.token_ids = await _tokenize(http, root, served_model, ans.completion)
        if on_done:
            on_done(ans)
        return ans

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=timeout, headers=headers) as http:
        try:
            return list(await asyncio.gather(*(one(item, http) for item in items)))
        finally:
            await sdk.close()


def accuracy_rows(answers: list[Answer]) -> list[dict]:
    """Accuracy with its 95% Wilson interval, over all items and per kind. Errors count as wrong."""
    rows = [r.row() for r in answers]
    out = []
    groups = {"": rows}
    for r in rows:
        if r["kind"]:
            groups.setdefault(r["kind"], []).append(r)
    for kind, rs in groups.items():
        k, n = sum(r["correct"] for r in rs), len(rs)
        lo, hi = wilson(k, n)
        out.append({"metric": "task_accuracy_pct" + (f".{kind}" if kind else ""), "value": 100 * k / n,
                    "ci_low": 100 * lo, "ci_high": 100 * hi, "n": n, "unit": "%"})
    errors = sum(r["error"] is not None for r in rows)
    out.append({"metric": "task_errors", "value": float(errors), "n": len(rows), "unit": "requests"})
    return out


# ---------------------------------------------------------------- cross-runtime agreement prompts

AGREE_PROMPTS = 12
AGREE_WORDS = 40
AGREE_TOKENS = 24  # long enough for greedy decoding to drift apart when two runtimes' arithmetic differs


def continuation_items(text: Path | None = None, n: int = AGREE_PROMPTS, words: int = AGREE_WORDS) -> list[Item]:
    """n passages of the evaluation text, evenly spaced, cut after `words` words, to be continued."""
    paras = [" ".join(p.split()) for p in (text or eval_text()).read_text().split("\n\n")]
    long = [p for p in paras if len(p.split()) >= words + 10]
    step = max(1, len(long) // n)
    return [Item(id=f"cont-{i:02d}", question=" ".join(p.split()[:words]), answer="", kind="continuation")
            for i, p in enumerate(long[::step][:n])]


def continuation_request(api: str, item: Item) -> dict:
    if api == "chat":
        return {"messages": [{"role": "user", "content": f"Continue this text:\n\n{item.question}"}]}
    return {"prompt": item.question}


async def continue_all(base_url: str, served_model: str, api: str, items: list[Item], concurrency: int = 1,
                       api_key: str | None = None, max_tokens: int = AGREE_TOKENS, on_done=None) -> list[Answer]:
    """Greedy continuations of each passage (no stop string), with their token ids."""
    return await ask_all(base_url, served_model, api, items, concurrency, api_key, max_tokens,
                         request=continuation_request, token_ids=True, on_done=on_done)


def common_prefix(a: list | None, b: list | None) -> int | None:
    if a is None or b is None:
        return None
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---------------------------------------------------------------- measuring a scenario


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _file_facts(model: str, quant: str) -> dict:
    path = local.model_path(model, quant)
    try:
        info = local.model_info(model, quant)
    except SetupError:
        info = {}
    return {"model_file": path.name, "model_sha256": info.get("sha256"),
            "model_bytes": path.stat().st_size if path.exists() else None, "model_note": info.get("note")}


@dataclass
class Job:
    """One server session: a runtime cell of one model and quant, and what to ask it."""
    cell: Cell  # its runtime, model and quant (workload and concurrency do not matter here)
    task: bool  # the question set
    agree: bool  # the continuation prompts
    cost: float = 0.0  # rough seconds, to start the longest jobs first


@dataclass
class QualityResult:
    fidelity_runs: int = 0
    task_runs: int = 0
    agreement_runs: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _fidelity_key(model: str, quant: str, reference: str, chunks: int, ctx: int) -> str:
    return stable_key({"kind": "fidelity", "model": model, "quant": quant, "reference": reference,
                      "reference_sha256": _file_facts(model, reference)["model_sha256"],
                      "model_sha256": _file_facts(model, quant)["model_sha256"], "text": EVAL_TEXT.sha256,
                      "chunks": chunks, "ctx": ctx, "llama_cpp": local.LLAMA_CPP_PYTHON})


def _session_identity(cell, kind: str, eval_name: str, eval_sha: str, concurrency: int) -> dict:
    """The identity of a task or agreement run, less run_id, hardware_id and runtime_version."""
    rt = cell.runtime
    workload = f"{kind}:{eval_name}"
    spec = {"kind": kind, "runtime": rt.name, "runtime_kind": rt.kind, "flags": rt.launch_flags(),
            "model": cell.model.name, "api": cell.model.api, "quant": cell.quant, "eval_sha256": eval_sha,
            "concurrency": concurrency,
            "prompt": PROMPT_VERSION if kind == "task" else [AGREE_PROMPTS, AGREE_WORDS, AGREE_TOKENS],
            "max_tokens": MAX_TOKENS if kind == "task" else AGREE_TOKENS}
    return {"cell_id": f"quality/{rt.name}/{cell.model.name}/{cell.quant}/{workload}", "cell_key": stable_key(spec),
            "scenario": cell.scenario, "runtime": rt.name, "runtime_kind": rt.kind, "model": cell.model.name,
            "quant": cell.quant, "workload": workload, "concurrency": concurrency,
            "threads": rt.threads if rt.started_here else None,
            "parallel": rt.parallel if rt.started_here else None}


def _gaplab_version() -> str:
    import gaplab

    return gaplab.__version__


# Runtimes measured unless --runtime names others: llama.cpp starts in seconds and attached
# servers are already up; vLLM's CPU build takes minutes to start, so it is measured on request.
QUICK_KINDS = ("llamacpp", "openai", "ollama")


def measure(scenario: str | Path, raw_dir: Path = RAW_DIR, force: bool = False, chunks: int = CHUNKS,
            eval_path: Path | None = None, runtimes: list[str] | None = None, task_on_all: bool = False,
            progress: bool = True) -> QualityResult:
    """Measure a scenario's quality, skipping what is already stored for this machine.

    Fidelity for every local llama.cpp model and quant of the scenario; the question set
    through the scenario's first runtime that serves each model and quant (every runtime
    with task_on_all); the continuation prompts through every runtime, for agreement.
    """
    from tqdm import tqdm

    from gaplab import store
    from gaplab.hardware import hardware, machine_id
    from gaplab.scenario import load_scenario

    t_start = time.monotonic()
    sc = load_scenario(scenario)
    items = load_eval_set(eval_path or EVAL_SET)  # a bad file stops here, before anything runs
    hw = {**hardware(), "machine_id": machine_id()}
    cells = sc.cells()
    if runtimes:
        known = {c.runtime.name for c in cells}
        unknown = [r for r in runtimes if r not in known]
        if unknown:
            raise ValueError(f"--runtime: {unknown[0]!r} is not in {scenario} (runtimes: {', '.join(sorted(known))})")
        cells = [c for c in cells if c.runtime.name in runtimes]
    else:
        cells = [c for c in cells if c.runtime.kind in QUICK_KINDS]
    sessions: dict[str, object] = {}
    for c in cells:
        sessions.setdefault(c.server_key, c)
    done = set() if force else store.completed_quality(raw_dir, hw["machine_id"])
    eval_file = Path(eval_path or EVAL_SET)
    eval_name, eval_sha = eval_file.stem, local._sha256(eval_file)
    text = eval_text()
    agree_items = continuation_items(text)
    result = QualityResult()

    # fidelity: llama-perplexity on the local files, one model at a time, -t 2 (nothing else runs)
    local_models: dict[str, list[str]] = {}
    for c in sessions.values():
        if c.runtime.kind == "llamacpp" and c.model.name in local.MODELS and c.quant not in local_models.get(
                c.model.name, []):
            local_models.setdefault(c.model.name, []).append(c.quant)
    if local_models and not local.llama_built():
        raise SetupError("llama-perplexity is not built: run 'gaplab local setup'")
    fid_todo = {}
    for model, quants in local_models.items():
        missing = [q for q in quants if not local.model_path(model, q).exists()]
        if missing:
            raise SetupError(f"model {model} {missing[0]} is not provisioned: run 'gaplab local setup'")
        ref = reference_quant(model, quants)
        todo = [q for q in quants if _fidelity_key(model, q, ref, chunks, CTX) not in done]
        result.skipped += len(quants) - len(todo)
        if todo:
            fid_todo[model] = (ref, todo)
    steps = sum(len(t) + (ref not in t) for ref, t in fid_todo.values())
    with tqdm(total=steps, desc="quality: llama-perplexity", unit="run", disable=not progress or not steps,
              file=sys.stdout, mininterval=1.0) as bar:
        for model, (ref, todo) in fid_todo.items():
            bar.set_postfix_str(model)
            meta = {"gaplab_version": _gaplab_version(), "scenario": sc.name, "text": asdict(EVAL_TEXT),
                    "chunks": chunks, "ctx": CTX}
            try:
                found = fidelity(model, todo, ref, text, chunks, CTX, on_step=lambda q: bar.update())
            except (ToolOutputError, SetupError) as exc:
                result.failed.append(f"fidelity {model}: {exc}"[:400])
                for q in todo:
                    _write_fidelity(raw_dir, sc.name, hw, model, q, ref, chunks, None, meta, str(exc))
                continue
            for r in found:
                _write_fidelity(raw_dir, sc.name, hw, model, r.quant, ref, chunks, r, meta, None)
                result.fidelity_runs += 1

    # task accuracy and agreement: one server session per runtime cell, two at a time
    first_runtime: dict[tuple, str] = {}  # in the scenario's order of runtimes (cells come sorted by name)
    order = {r.name: i for i, r in enumerate(sc.runtimes)}
    for c in sorted(sessions.values(), key=lambda c: order[c.runtime.name]):
        first_runtime.setdefault((c.model.name, c.quant), c.runtime.name)
    # a model's largest file stands for its size: every quant of Gemma 3 pays for its 262k vocabulary
    scale = {m: max((local.model_path(m, c.quant).stat().st_size for c in sessions.values()
                     if c.model.name == m and local.model_path(m, c.quant).exists()), default=5e8)
             for m in {c.model.name for c in sessions.values()}}
    jobs = []
    for c in sessions.values():
        conc = _concurrency(c.runtime)
        wants_task = task_on_all or first_runtime[(c.model.name, c.quant)] == c.runtime.name
        task = wants_task and _session_identity(c, "task", eval_name, eval_sha, conc)["cell_key"] not in done
        agree = _session_identity(c, "agree", EVAL_TEXT.name, EVAL_TEXT.sha256, conc)["cell_key"] not in done
        result.skipped += (wants_task and not task) + (not agree)
        if task or agree:
            jobs.append(Job(c, task, agree, cost=(len(items) * task + AGREE_PROMPTS * 4 * agree)
                            * (1 + scale[c.model.name] / 2e8)))
    jobs.sort(key=lambda j: -j.cost)
    total = sum(len(items) * j.task + len(agree_items) * j.agree for j in jobs)
    with tqdm(total=total, desc="quality: questions", unit="req", disable=not progress or not total,
              file=sys.stdout, mininterval=1.0) as bar:
        _run_jobs(jobs, raw_dir, hw, items, eval_name, eval_sha, agree_items, bar, result, task_on_all)
    result.seconds = time.monotonic() - t_start
    return result


def _concurrency(rt) -> int:
    """Requests in flight: one per slot where gaplab starts the server, so a batching runtime batches."""
    return min(rt.parallel, 8) if rt.started_here else 4


def _write_fidelity(raw_dir, scenario: str, hw: dict, model: str, quant: str, ref: str, chunks: int,
                    res: FidelityResult | None, meta: dict, error: str | None) -> None:
    from gaplab import store

    run_id = store.new_run_id()
    ident = {"run_id": run_id, "machine_id": hw["machine_id"], "series_id": run_id, "trial": 1, "cell_id": f"quality/llama-perplexity/{model}/{quant}/text:{EVAL_TEXT.name}",
             "cell_key": _fidelity_key(model, quant, ref, chunks, CTX), "scenario": scenario,
             "hardware_id": hw["hardware_id"], "runtime": "llama-perplexity", "runtime_kind": "llamacpp",
             "runtime_version": local.llama_version(), "model": model, "quant": quant,
             "workload": f"text:{EVAL_TEXT.name}", "concurrency": 1, "threads": TOOL_THREADS, "parallel": 1}
    common = {**_file_facts(model, quant), "reference": ref, "eval_set": EVAL_TEXT.name,
              "eval_sha256": EVAL_TEXT.sha256, "gaplab_version": meta["gaplab_version"], "measured_at": _now()}
    if res is None:
        rows = [{**common, "status": "failed", "error": error}]
    else:
        n = int(res.metrics["n_tokens"][0])
        units = {"perplexity": "", "perplexity_base": "", "ppl_ratio": "", "kld_mean": "nats", "kld_p99": "nats",
                 "rms_dp_pct": "%", "top1_agreement_pct": "%"}
        rows = [{**common, "metric": m, "value": v, "uncertainty": u, "n": n, "unit": units[m], "status": "complete",
                 "command": res.command} for m, (v, u) in res.metrics.items() if m != "n_tokens"]
    store.write_quality(raw_dir, ident, rows, {**meta, "status": rows[0]["status"]})


def _run_jobs(jobs: list[Job], raw_dir, hw, items, eval_name, eval_sha, agree_items, bar, result,
              task_on_all: bool) -> None:
    """Two server sessions at a time: with -t 1 servers, that keeps both cores busy."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    start_lock = threading.Lock()  # one server start (fork) at a time
    tally = threading.Lock()

    def run(job: Job) -> None:
        from gaplab import store
        from gaplab.runtimes import open_server

        c, rt = job.cell, job.cell.runtime
        conc = _concurrency(rt)
        parts = ([("task", eval_name, eval_sha, items)] if job.task else []) + \
                ([("agree", EVAL_TEXT.name, EVAL_TEXT.sha256, agree_items)] if job.agree else [])
        srv, error = None, None
        answers: dict[str, list[Answer]] = {}
        try:
            with contextlib.ExitStack() as stack:
                with start_lock:
                    srv = stack.enter_context(open_server(c))
                for kind, _, _, its in parts:
                    fn = ask_all if kind == "task" else continue_all
                    extra = {"token_ids": task_on_all} if kind == "task" else {}
                    answers[kind] = asyncio.run(fn(srv.base_url, srv.served_model, c.model.api, its, conc,
                                                   srv.api_key, on_done=lambda a: bar.update(), **extra))
        except Exception as exc:  # a server that will not start fails this session, not the others
            error = f"{type(exc).__name__}: {exc}"[:500]
        for kind, name, sha, its in parts:
            ident = _session_identity(c, kind, name, sha, conc)
            run_id = store.new_run_id()
            ident.update(run_id=run_id, hardware_id=hw["hardware_id"], machine_id=hw["machine_id"],
                         series_id=run_id, trial=1,
                         runtime_version=srv.runtime_version if srv else "unknown")
            facts = _file_facts(c.model.name, c.quant) if rt.kind == "llamacpp" else {}
            if srv is not None:
                facts = {**facts, "model_file": srv.model_file or facts.get("model_file"),
                         "model_sha256": srv.model_sha256 or facts.get("model_sha256")}
            common = {**facts, "eval_set": name, "eval_sha256": sha, "measured_at": _now(),
                      "gaplab_version": _gaplab_version(),
                      "command": srv.launch_command if srv else None}
            got = answers.get(kind)
            errors = sum(a.error is not None for a in got) if got else 0
            if got is None or errors == len(got):
                why = error or (got[0].error if got else "not run")
                rows = [{**common, "status": "failed", "error": why}]
                with tally:
                    result.failed.append(f"{kind} {c.server_key}: {why}"[:400])
            elif kind == "task":
                rows = [{**common, **r, "status": "complete"} for r in accuracy_rows(got)]
            else:
                rows = [{**common, "metric": "continuations", "value": float(len(got) - errors), "n": len(got),
                         "unit": "prompts", "status": "complete"}]
            meta = {"gaplab_version": _gaplab_version(), "status": rows[0]["status"],
                    "server": srv.to_dict() if srv else None}
            store.write_quality(raw_dir, ident, rows, meta, answers=[a.row() for a in got] if got else [])
            with tally:
                if rows[0]["status"] == "complete":
                    result.task_runs += kind == "task"
                    result.agreement_runs += kind == "agree"

    pool = ThreadPoolExecutor(max_workers=2)
    try:
        for f in [pool.submit(run, j) for j in jobs]:
            f.result()
    finally:  # on Ctrl-C, start no new session; the running ones stop their servers as they end
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- what the page reads

K3 = ["hardware_id", "model", "quant"]
K4 = ["hardware_id", "runtime", "model", "quant"]


def latest_quality(quality: pl.DataFrame) -> pl.DataFrame:
    """Rows of the newest complete run of each quality cell on each machine (reruns replace older ones)."""
    quality = quality.with_columns(machine_id=pl.coalesce("machine_id", "hardware_id"))  # schema 1: class only
    runs = (quality.filter(pl.col("status") == "complete").select("machine_id", "cell_key", "run_id").unique()
            .sort("run_id").group_by(["machine_id", "cell_key"]).last())
    return quality.join(runs.select("run_id"), on="run_id", how="semi")


def read_quality(raw_dir: Path = RAW_DIR, machine_id: str = "") -> tuple[pl.DataFrame, pl.DataFrame]:
    """(figures, answers) of the newest complete quality runs, of one machine when given."""
    from gaplab import store

    q = latest_quality(store.read_table(raw_dir, "quality"))
    a = store.read_table(raw_dir, "answers").join(q.select("run_id", "machine_id").unique(), on="run_id", how="semi")
    a = a.with_columns(machine_id=pl.coalesce("machine_id", "hardware_id"))
    if machine_id:
        q, a = q.filter(pl.col("machine_id") == machine_id), a.filter(pl.col("machine_id") == machine_id)
    return q, a


def _metric(name: str, col: str = "value") -> pl.Expr:
    return pl.col(col).filter(pl.col("metric") == name).first()


def fidelity_frame(quality: pl.DataFrame) -> pl.DataFrame:
    """One row per machine x model x quant: perplexity, KLD and top-1 agreement against the reference file."""
    return (quality.filter(pl.col("runtime") == "llama-perplexity").group_by(K3).agg(
        reference=pl.col("reference").first(), model_bytes=pl.col("model_bytes").first(),
        model_note=pl.col("model_note").first(), tokens=pl.col("n").first(),
        ppl=_metric("perplexity"), ppl_pm=_metric("perplexity", "uncertainty"),
        ppl_ratio=_metric("ppl_ratio"), ppl_ratio_pm=_metric("ppl_ratio", "uncertainty"),
        kld=_metric("kld_mean"), kld_pm=_metric("kld_mean", "uncertainty"), kld_p99=_metric("kld_p99"),
        top1_pct=_metric("top1_agreement_pct"), top1_pm=_metric("top1_agreement_pct", "uncertainty"),
    ).with_columns(  # the reference against itself: equal by definition, not measured
        ppl_ratio=pl.when(pl.col("quant") == pl.col("reference")).then(1.0).otherwise("ppl_ratio")))


def task_frame(quality: pl.DataFrame) -> pl.DataFrame:
    """One row per machine x runtime x model x quant x question set: accuracy and its 95% interval."""
    return (quality.filter(pl.col("metric") == "task_accuracy_pct")
            .select(*K4, "eval_set", accuracy_pct="value", acc_low="ci_low", acc_high="ci_high", questions="n"))


def quality_speed_size(quality: pl.DataFrame, summary: pl.DataFrame) -> pl.DataFrame:
    """Quality, file size and decode tok/s at one user, one row per machine x model x quant x runtime.

    Fidelity is a property of the file (joined on machine, model, quant); task accuracy and
    speed are properties of a runtime cell (joined on machine, runtime, model, quant).
    """
    return (fidelity_frame(quality)
            .join(task_frame(quality), on=K3, how="full", coalesce=True)  # attached servers have no fidelity
            .join(summary.filter(pl.col("concurrency") == 1).group_by(K4).agg(
                decode_tok_s=pl.col("per_user_tok_s").mean(), speed_run=pl.col("run_ids").first()), on=K4, how="left")
            .with_columns(size_mb=pl.col("model_bytes") / 1e6)
            .sort(["model", "size_mb"], descending=[False, True]))


def recovery(frame: pl.DataFrame) -> pl.DataFrame:
    """Each quant's task accuracy as % of the reference file's, the way published comparisons quote it."""
    ref = frame.filter(pl.col("quant") == pl.col("reference")).select(
        "hardware_id", "model", "runtime", ref_accuracy_pct="accuracy_pct")
    return (frame.join(ref, on=["hardware_id", "model", "runtime"], how="left")
            .with_columns(recovery_pct=pl.when(pl.col("ref_accuracy_pct") > 0)
                          .then(100 * pl.col("accuracy_pct") / pl.col("ref_accuracy_pct"))))


def recovery_beside_published(frame: pl.DataFrame, reference: pl.DataFrame) -> pl.DataFrame:
    """Recovery measured here next to the `*_recovery_pct` figures of data/reference/published_results.csv."""
    ours = (recovery(frame).filter(pl.col("accuracy_pct").is_not_null())
            .select(who=pl.lit("measured here"), source=pl.lit("gaplab (this report)"), hardware="hardware_id",
                    model="model", runtime="runtime", quant="quant",
                    benchmark=pl.format("{} ({} questions), vs {}", "eval_set", "questions", "reference"),
                    recovery_pct="recovery_pct",
                    note=pl.format("accuracy {}% [{}–{}] vs {}%", pl.col("accuracy_pct").round(1),
                                   pl.col("acc_low").round(1), pl.col("acc_high").round(1),
                                   pl.col("ref_accuracy_pct").round(1))))
    pub = (reference.filter(pl.col("metric").str.ends_with("_recovery_pct"))
           .select(who=pl.lit("published"), source="source", hardware="hardware", model="model", runtime="runtime",
                   quant="quant", benchmark=pl.col("metric").str.replace("_recovery_pct$", "") + ", vs FP16",
                   recovery_pct=pl.col("value").cast(pl.Float64), note=pl.col("note").fill_null("")))
    return pl.concat([ours, pub], how="vertical_relaxed")


def agreement(answers: pl.DataFrame) -> pl.DataFrame:
    """Pairs of runtimes that got the same prompts with one model and quant: how often their
    completions are identical, the mean common token prefix, and the first pair that differs."""
    keys = ["hardware_id", "model", "quant", "workload"]
    rows = []
    for key, grp in answers.filter(pl.col("error").is_null()).group_by(keys, maintain_order=True):
        by_rt = {rt: g for (rt,), g in grp.group_by(["runtime"])}
        names = sorted(by_rt)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pair = by_rt[a].join(by_rt[b], on="item_id", suffix="_b").sort("item_id")
                if pair.is_empty():
                    continue
                same = (pair["completion"] == pair["completion_b"]).to_list()
                prefixes = [common_prefix(x, y) for x, y in zip(pair["completion_token_ids"].to_list(),
                                                                   pair["completion_token_ids_b"].to_list())]
                lengths = [len(x) for x in pair["completion_token_ids"].to_list() if x is not None]
                known = [p for p in prefixes if p is not None]
                diff = pair.filter(pl.col("completion") != pl.col("completion_b"))
                ex = diff.row(0, named=True) if diff.height else None
                rows.append({**dict(zip(keys, key)), "runtime_a": a, "runtime_b": b, "prompts": pair.height,
                             "identical_pct": 100 * sum(same) / len(same),
                             "mean_prefix_tokens": sum(known) / len(known) if known else None,
                             "mean_tokens": sum(lengths) / len(lengths) if lengths else None,
                             "example_prompt": ex["question"] if ex else None,
                             "example_a": ex["completion"] if ex else None,
                             "example_b": ex["completion_b"] if ex else None,
                             "example_diverges_at": common_prefix(ex["completion_token_ids"],
                                                                  ex["completion_token_ids_b"]) if ex else None})
    schema = {"hardware_id": pl.String, "model": pl.String, "quant": pl.String, "workload": pl.String,
              "runtime_a": pl.String, "runtime_b": pl.String, "prompts": pl.Int64, "identical_pct": pl.Float64,
              "mean_prefix_tokens": pl.Float64, "mean_tokens": pl.Float64, "example_prompt": pl.String,
              "example_a": pl.String, "example_b": pl.String, "example_diverges_at": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def chart_points(frame: pl.DataFrame) -> pl.DataFrame:
    """What charts.quality_size_speed draws: the reference file sits at 100% by definition."""
    ref = pl.col("quant") == pl.col("reference")
    return frame.with_columns(
        top1_plot=pl.when(ref).then(100.0).otherwise("top1_pct"),
        top1_lo=pl.col("top1_pct") - pl.col("top1_pm"), top1_hi=pl.col("top1_pct") + pl.col("top1_pm"),
        label=pl.col("quant") + pl.when(pl.col("decode_tok_s").is_not_null())
        .then(pl.format(" · {} tok/s", pl.col("decode_tok_s").round(1))).otherwise(pl.lit("")))


def display_table(frame: pl.DataFrame) -> pl.DataFrame:
    """The measured figures as text, one row per model x quant (x runtime)."""
    def pm(v: str, u: str, digits: int) -> pl.Expr:
        return pl.when(pl.col(v).is_null()).then(pl.lit("reference")).otherwise(
            pl.format("{} ± {}", pl.col(v).round(digits), pl.col(u).round(digits)))

    return frame.select(
        "model", "quant", size_mb=pl.col("size_mb").round(0).cast(pl.Int64),
        perplexity=pl.format("{} ± {}", pl.col("ppl").round(2), pl.col("ppl_pm").round(2)),
        kld=pm("kld", "kld_pm", 5), same_top_token_pct=pm("top1_pct", "top1_pm", 2),
        task_accuracy_pct=pl.when(pl.col("accuracy_pct").is_null()).then(pl.lit("not measured")).otherwise(
            pl.format("{} [{}–{}]", pl.col("accuracy_pct").round(1), pl.col("acc_low").round(1),
                      pl.col("acc_high").round(1))),
        decode_tok_s_1_user=pl.col("decode_tok_s").round(1), runtime="runtime")


def setup_story(quality: pl.DataFrame) -> str:
    """What was scored and asked, from the stored rows."""
    if quality.is_empty():
        return "No quality runs for this machine yet: run `gaplab quality scenarios/local-cpu.yaml` (`make report` does)."
    fid = quality.filter(pl.col("runtime") == "llama-perplexity")
    task = quality.filter(pl.col("metric") == "task_accuracy_pct")
    parts = []
    if not fid.is_empty():
        tokens = fid["n"].drop_nulls()
        parts.append(f"Fidelity: `llama-perplexity` scored {int(tokens.max()) if len(tokens) else 'no'} tokens of "
                     f"{EVAL_TEXT.citation} (its prose chapters and appendices, {EVAL_TEXT.license.split(' (')[0]}, "
                     f"from Debian's {EVAL_TEXT.package} {EVAL_TEXT.version} package, sha256 {EVAL_TEXT.sha256[:12]}…), "
                     "each token with the 256 before it as context, first with each model's highest-precision file, "
                     "then with every other file against the saved distributions.")
    if not task.is_empty():
        sets = ", ".join(sorted(set(task["eval_set"].to_list())))
        parts.append(f"Task accuracy: {int(task['n'].max())} questions ({sets}: sums, differences, products, "
                     "the next number, unit conversions, the larger or smaller of four numbers, the letter "
                     f"before or after) asked at temperature 0 through each runtime's API with {len(FEW_SHOT)} "
                     "worked examples first; an answer is right when its number (within the item's tolerance), "
                     "its letter or its exact text matches. Intervals are 95% Wilson intervals.")
    return "\n\n".join(parts)


# ---------------------------------------------------------------- prose computed from the data


def derivation_story(frame: pl.DataFrame) -> str:
    """Which files were made here from the shipped 4-bit file (their quality is bounded by it)."""
    out = []
    for (model,), g in frame.group_by(["model"], maintain_order=True):
        made = g.filter(pl.col("model_note").fill_null("").str.starts_with("requantized"))
        shipped = g.filter(~pl.col("model_note").fill_null("").str.starts_with("requantized"))
        if made.is_empty():
            continue
        src = ", ".join(shipped["quant"].unique(maintain_order=True).to_list()) or "shipped 4-bit"
        out.append(f"**{model}**: {', '.join(made['quant'].unique(maintain_order=True).to_list())} were made on this "
                   f"machine from the shipped {src} file, so they cannot hold more than it does; here F16 is the "
                   f"{src} weights widened, not the original model's F16.")
    if not out:
        return ""
    return ("These figures compare files with one another, not with the original models: " + " ".join(out)
            + " A shipped file's distance from F16 therefore measures arithmetic (how activations are "
            "rounded in its matrix products), while a requantized file's distance adds the weights it lost.")


def fidelity_story(frame: pl.DataFrame) -> str:
    out = []
    for (model,), g in frame.group_by(["model"], maintain_order=True):
        g = g.unique(subset=["quant"], keep="first", maintain_order=True)
        ref = g.filter(pl.col("quant") == pl.col("reference"))
        others = g.filter((pl.col("quant") != pl.col("reference")) & pl.col("kld").is_not_null()).sort("kld")
        if ref.is_empty() or others.is_empty():
            continue
        r = ref.row(0, named=True)
        parts = [f"{o['quant']} KLD {o['kld']:.4f} ± {o['kld_pm']:.4f}, same top token {o['top1_pct']:.1f}% ± "
                 f"{o['top1_pm']:.1f}, perplexity ×{o['ppl_ratio']:.3f} ± {o['ppl_ratio_pm']:.3f}"
                 for o in others.iter_rows(named=True)]
        out.append(f"**{model}** against its {r['reference']} file (perplexity {r['ppl']:.2f} ± {r['ppl_pm']:.2f} "
                   f"over {r['tokens']} tokens): " + "; ".join(parts) + ".")
    return "\n\n".join(out)


def pick_story(frame: pl.DataFrame, max_ppl_increase_pct: float = 2.0) -> str:
    """Per model: the fastest quant at one user whose perplexity stays within max_ppl_increase_pct of
    the reference file's and whose task accuracy is not clearly below it; and why the others lose."""
    out = []
    for (model,), g in frame.group_by(["model"], maintain_order=True):
        g = g.drop_nulls("decode_tok_s").unique(subset=["quant"], keep="first", maintain_order=True)
        ref = g.filter(pl.col("quant") == pl.col("reference"))
        if ref.is_empty():
            continue
        r = ref.row(0, named=True)
        limit = 1 + max_ppl_increase_pct / 100

        def fails(row: dict) -> str | None:
            if row["ppl_ratio"] is not None and row["ppl_ratio"] > limit:
                return f"its perplexity is {100 * (row['ppl_ratio'] - 1):+.1f}% against {r['quant']}'s"
            if row["acc_high"] is not None and r["accuracy_pct"] is not None and row["acc_high"] < r["accuracy_pct"]:
                return (f"its task accuracy ({row['accuracy_pct']:.1f}%, 95% interval up to {row['acc_high']:.1f}%) "
                        f"is below {r['quant']}'s {r['accuracy_pct']:.1f}%")
            return None

        ok = [row for row in g.sort("decode_tok_s", descending=True).iter_rows(named=True) if fails(row) is None]
        if not ok:
            continue
        best = ok[0]
        text = f"**{model}**: pick **{best['quant']}** on this machine"
        if best["quant"] == r["quant"]:
            text += (f": it is the fastest acceptable file ({best['decode_tok_s']:.1f} tok/s at one user, "
                     f"{best['size_mb']:.0f} MB).")
        else:
            text += (f". At one user it decodes {best['decode_tok_s']:.1f} tok/s, {best['decode_tok_s'] / r['decode_tok_s']:.2f}× "
                     f"{r['quant']}'s {r['decode_tok_s']:.1f}, from a {best['size_mb']:.0f} MB file instead of "
                     f"{r['size_mb']:.0f} MB; its perplexity is {100 * (best['ppl_ratio'] - 1):+.1f}% against "
                     f"{r['quant']}'s (KLD {best['kld']:.4f}, same top token {best['top1_pct']:.1f}%)")
            if best["accuracy_pct"] is not None and r["accuracy_pct"] is not None:
                text += (f" and its task accuracy is {best['accuracy_pct']:.1f}% [{best['acc_low']:.1f}–"
                         f"{best['acc_high']:.1f}] against {r['accuracy_pct']:.1f}%")
            text += "."
        faster = [row for row in g.iter_rows(named=True)
                  if row["decode_tok_s"] > best["decode_tok_s"] and fails(row)]
        for row in faster:
            text += f" {row['quant']} is faster ({row['decode_tok_s']:.1f} tok/s) but {fails(row)}."
        out.append(text)
    if not out:
        return "No model has both quality and speed figures yet: run `gaplab sweep` and `gaplab quality`."
    return (f"The rule: the fastest file at one user whose perplexity is within {max_ppl_increase_pct:g}% of the "
            "highest-precision file's and whose task accuracy is not clearly lower (its 95% interval reaches the "
            "reference's accuracy).\n\n" + "\n\n".join(out))


def agreement_story(table: pl.DataFrame) -> str:
    t = table.filter(pl.col("workload").str.starts_with("agree:"))
    if t.is_empty():
        return ""
    out = []
    for row in t.iter_rows(named=True):
        out.append(f"{row['model']} {row['quant']}: {row['runtime_a']} and {row['runtime_b']} wrote identical "
                   f"continuations for {row['identical_pct']:.0f}% of {row['prompts']} prompts; on average the "
                   f"first {row['mean_prefix_tokens']:.1f} of {row['mean_tokens']:.1f} tokens match.")
    diff = t.filter(pl.col("identical_pct") < 100)
    tail = ("Every pair matched token for token." if diff.is_empty() else
            "Once two continuations part they rarely meet again: at that token the two runtimes' arithmetic "
            "(a sequence decoded in a batch with others, or alone, with its prompt cached or not) ranked two "
            "near-equal candidates differently, and greedy decoding follows whichever came first.")
    return "- " + "\n- ".join(out) + "\n\n" + tail


def _quote(text: str) -> str:
    """A completion shown verbatim inside Markdown: escaped, its line breaks made visible."""
    import html

    return html.escape(text).replace("\n", " ⏎ ").replace("*", "&#42;").replace("_", "&#95;").replace("`", "&#96;")


def example_pair(table: pl.DataFrame) -> str:
    """The continuations of one prompt where two runtimes differ (the pair that agrees least)."""
    t = table.filter(pl.col("example_a").is_not_null() & pl.col("workload").str.starts_with("agree:"))
    if t.is_empty():
        return ""
    r = t.sort("identical_pct").row(0, named=True)
    tail = " ".join(r["example_prompt"].split()[-12:])
    return (f"An example ({r['model']} {r['quant']}): the passage ends “…{_quote(tail)}” and the two "
            f"continuations share their first {r['example_diverges_at']} tokens.\n\n"
            f"- **{r['runtime_a']}**: “{_quote(r['example_a'])}”\n"
            f"- **{r['runtime_b']}**: “{_quote(r['example_b'])}”")
