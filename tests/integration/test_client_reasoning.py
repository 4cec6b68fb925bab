"""A reasoning model's stream through StreamClient, against tests/support/fault_server.py (no
reasoning model runs on this machine): the first token of any kind, reasoning included, is
TTFT; the first answer token comes THINK_PAUSE_S later; reasoning tokens are counted apart from
the answer's, by the server's usage where it gives them, else by the client's chunks. OpenAI SSE
(reasoning_content, reasoning) and Ollama's native stream (thinking, chat and generate), stored
in a real Parquet run and read back through metrics.with_latencies."""

import asyncio
import time

import fault_server
import pytest
from fault_server import THINK_PAUSE_S, THOUGHTS, TOKENS

from gaplab.analysis import metrics
from gaplab.measure.client import StreamClient
from gaplab.measure.records import CONTENT, REASONING, ROLE, RequestRecord
from gaplab.storage import store

# (fault, protocol, api)
STREAMS = [("reasoning", "openai", "chat"), ("reasoning-field", "openai", "chat"),
           ("ollama-thinking", "ollama", "chat"), ("ollama-thinking", "ollama", "completions"),
           ("ok", "openai", "chat"), ("ollama-ok", "ollama", "chat")]


async def drive() -> list[RequestRecord]:
    server = await fault_server.start()
    root = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    out = []
    for i, (fault, protocol, api) in enumerate(STREAMS):
        async with StreamClient(root + ("" if protocol == "ollama" else "/v1"), api, timeout=5,
                                protocol=protocol) as client:
            rec = RequestRecord(index=i, user=0, warmup=False, scheduled_ns=time.perf_counter_ns(),
                                target_output_tokens=TOKENS, tag=f"{fault} {protocol} {api}")
            out.append(await client.stream(client.body(fault, TOKENS, "fake"), rec))
    server.close()
    await server.wait_closed()
    return out


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The records, and their request rows as stored and read back with the latencies."""
    records = asyncio.run(drive())
    raw = tmp_path_factory.mktemp("reasoning")
    identity = {"run_id": store.new_run_id(), "cell_id": "c", "cell_key": "k", "scenario": "s",
                "hardware_id": "h", "machine_id": "m", "series_id": "s1", "trial": 1, "runtime": "fake",
                "runtime_kind": "openai", "runtime_version": "0", "model": "m", "quant": "q", "workload": "w",
                "concurrency": 1, "threads": None, "parallel": None}
    store.write_run(raw, identity, {"status": "complete"}, records)
    rows = metrics.with_latencies(store.read_table(raw, "requests")).sort("request_index")
    return records, rows, raw


@pytest.mark.parametrize("i", [i for i, s in enumerate(STREAMS) if s[0] in fault_server.REASONING])
def test_ttft_is_the_first_reasoning_token_and_the_answer_comes_after_the_pause(stored, i):
    records, rows, _ = stored
    rec = records[i]
    assert rec.error is None, rec.error
    kinds = [k for _, k, _ in rec.chunks if k in (ROLE, REASONING, CONTENT)]
    assert kinds == ([] if STREAMS[i][1] == "ollama" else [ROLE]) + [REASONING] * THOUGHTS + [CONTENT] * TOKENS
    first_reasoning = next(t for t, k, _ in rec.chunks if k == REASONING)
    first_content = next(t for t, k, _ in rec.chunks if k == CONTENT)
    assert rec.first_token_ns == first_reasoning and rec.first_answer_ns == first_content
    # the server waits THINK_PAUSE_S between its last thought and its first answer token
    assert rec.first_answer_ns - rec.first_token_ns >= THINK_PAUSE_S * 1e9
    row = rows.row(i, named=True)
    assert row["ttft_ms"] == pytest.approx((first_reasoning - rec.sent_ns) / 1e6)
    assert row["ttft_answer_ms"] == pytest.approx((first_content - rec.sent_ns) / 1e6)
    assert row["ttft_answer_ms"] - row["ttft_ms"] >= THINK_PAUSE_S * 1e3


def test_reasoning_tokens_are_counted_apart_from_the_answer(stored):
    records, rows, _ = stored
    by = {s: rows.row(i, named=True) for i, s in enumerate(STREAMS)}
    # the server's own count wins where its usage gives one (2 tokens a chunk here)
    openai = by[("reasoning", "openai", "chat")]
    assert openai["reasoning_chunks"] == THOUGHTS and openai["server_reasoning_tokens"] == 2 * THOUGHTS
    assert openai["reasoning_tokens"] == 2 * THOUGHTS and openai["answer_tokens"] == TOKENS
    # no count in the usage (newer vLLM's `reasoning` field here; Ollama's done line): the client's chunks
    for key in [("reasoning-field", "openai", "chat"), ("ollama-thinking", "ollama", "chat"),
                ("ollama-thinking", "ollama", "completions")]:
        row = by[key]
        assert row["server_reasoning_tokens"] is None, key
        assert row["reasoning_chunks"] == row["reasoning_tokens"] == THOUGHTS, key
        assert row["completion_tokens"] == TOKENS + THOUGHTS and row["answer_tokens"] == TOKENS, key
        assert row["n_token_chunks"] == TOKENS + THOUGHTS, key  # reasoning is still output


def test_without_reasoning_both_times_are_the_same(stored):
    records, rows, _ = stored
    for i, (fault, _, _) in enumerate(STREAMS):
        if fault in fault_server.REASONING:
            continue
        row = rows.row(i, named=True)
        assert row["error"] is None and row["first_answer_ns"] == row["first_token_ns"] is not None
        assert row["ttft_answer_ms"] == row["ttft_ms"]
        assert row["reasoning_tokens"] == 0 and row["answer_tokens"] == TOKENS == row["completion_tokens"]


def test_runs_from_before_schema_9_read_with_no_answer_time(stored, tmp_path):
    """Older rows hold no first answer token nor reasoning count: null, never a guess."""
    import pyarrow.parquet as pq

    _, rows, raw = stored
    old = store.schema_for("requests", 8)
    table = pq.read_table(next(raw.glob("**/*.requests.parquet")))
    pq.write_table(table.select(old.names).cast(old), tmp_path / "x.requests.parquet")
    back = metrics.with_latencies(store.read_table(tmp_path, "requests"))
    assert back.height == len(STREAMS)
    assert back["ttft_answer_ms"].null_count() == back["reasoning_tokens"].null_count() == len(STREAMS)
    assert back["ttft_ms"].sort().to_list() == rows["ttft_ms"].sort().to_list()
