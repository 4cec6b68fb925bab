"""Asking a runtime: every item through its OpenAI-compatible API at temperature 0, answers kept in
order, through the client the speed measurements use (client.StreamClient: its non-streamed calls)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gaplab.measure.client import StreamClient
from gaplab.quality.questions import (
    AGREE_TOKENS,
    MAX_TOKENS,
    Item,
    chat_messages,
    completion_prompt,
    continuation_request,
    score,
    wilson,
)


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


async def _ask(client: StreamClient, model: str, item: Item, body: dict, max_tokens: int) -> Answer:
    ans = Answer(item)
    t0 = time.perf_counter()
    try:
        ans.completion, ans.finish_reason, ans.prompt_tokens, ans.completion_tokens = await client.complete(
            {"model": model, "max_tokens": max_tokens, "temperature": 0, **body})
    except Exception as exc:  # a failed question is a row with its error, never a missing row
        ans.error = f"{type(exc).__name__}: {exc}"[:500]
    ans.latency_ms = (time.perf_counter() - t0) * 1e3
    return ans


async def ask_all(base_url: str, served_model: str, api: str, items: list[Item], concurrency: int = 1,
                  api_key: str | None = None, max_tokens: int = MAX_TOKENS, request=task_request,
                  token_ids: bool = False, timeout: float = 120, on_done=None) -> list[Answer]:
    """Every item through one server at temperature 0, `concurrency` requests in flight; answers in item order.

    base_url: the server's OpenAI-compatible /v1 root. request(api, item) makes the request
    body; token_ids also asks the server to tokenize each completion (what agreement between
    runtimes compares).
    """
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(item: Item) -> Answer:
        async with sem:
            ans = await _ask(client, served_model, item, request(api, item), max_tokens)
        if ans.completion is not None and token_ids:
            ans.token_ids = await client.tokenize(ans.completion, served_model)
        if on_done:
            on_done(ans)
        return ans

    async with StreamClient(base_url, api, api_key, timeout) as client:
        return list(await asyncio.gather(*(one(item) for item in items)))


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


async def continue_all(base_url: str, served_model: str, api: str, items: list[Item], concurrency: int = 1,
                       api_key: str | None = None, max_tokens: int = AGREE_TOKENS, on_done=None) -> list[Answer]:
    """Greedy continuations of each passage (no stop string), with their token ids."""
    return await ask_all(base_url, served_model, api, items, concurrency, api_key, max_tokens,
                         request=continuation_request, token_ids=True, on_done=on_done)
