"""What is asked: the question set made, loaded, scored and the continuation prompts for agreement."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from gaplab.quality.evaltext import eval_text
from gaplab.spec import jsonl
from gaplab.spec.config import ROOT

EVAL_DIR = ROOT / "data" / "eval"  # the shipped question set lives with the code, not under GAPLAB_DATA_DIR


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


RULE = "each line must be one JSON object with question and answer"


def load_eval_set(path: Path | str) -> list[Item]:
    """A JSONL file: one object a line with question, answer, and optional choices, tolerance, id, kind.

    With choices, the answer is a letter (A, B, ...) or the text of one choice.
    """
    path = Path(path)
    if not path.exists():
        raise EvalSetError(f"{path}: no such evaluation file")
    items, seen = [], set()
    for where, no, obj in jsonl.objects(path.read_text(encoding="utf-8"), path, RULE, EvalSetError):
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
