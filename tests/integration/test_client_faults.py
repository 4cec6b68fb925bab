"""Every way a stream goes wrong is recorded as what it is: requests from 4 concurrent
users through StreamClient against tests/support/fault_server.py, cycling through its
faults (each fault twice). A stream cut before its end marker must never pass as a
success, and it keeps the chunks that did arrive."""

import asyncio
import itertools
import time

import fault_server
import pytest
from fault_server import CUT_AFTER, FAULTS, REASONING, SLOW_HEADERS_S, TOKENS

from gaplab.analysis.metrics import error_kind
from gaplab.measure.client import StreamClient
from gaplab.measure.records import CONTENT, ROLE, TOKEN_KINDS, RequestRecord

USERS, TIMEOUT_S = 4, 1.0
REQUESTS = 2 * len(FAULTS)


async def drive() -> list[tuple[str, RequestRecord]]:
    server = await fault_server.start()
    root = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    names, counter, done = list(FAULTS), itertools.count(), []
    async with (StreamClient(root + "/v1", "chat", timeout=TIMEOUT_S) as openai_client,
                StreamClient(root, "chat", timeout=TIMEOUT_S, protocol="ollama") as ollama_client):

        async def user(u: int) -> None:
            while (i := next(counter)) < REQUESTS:
                fault = names[i % len(names)]
                client = ollama_client if fault.startswith("ollama") else openai_client
                # Ollama's repeat limit needs a target above its 31 tokens, as the default's 48 is
                target = 48 if fault == "ollama-repeat-limit" else TOKENS
                rec = RequestRecord(index=i, user=u, warmup=False, scheduled_ns=time.perf_counter_ns(),
                                    target_output_tokens=target)
                done.append((fault, await client.stream(client.body(fault, target, "fake"), rec)))

        await asyncio.gather(*(user(u) for u in range(USERS)))
    server.close()
    await server.wait_closed()
    return done


@pytest.fixture(scope="module")
def records():
    return asyncio.run(drive())


def test_every_fault_was_requested_twice(records):
    assert sorted(f for f, _ in records) == sorted(list(FAULTS) * 2)


# reasoning streams count more tokens than they answer: tests/integration/test_client_reasoning.py
@pytest.mark.parametrize("fault", [f for f, e in FAULTS.items() if e is None and f not in REASONING])
def test_good_streams_have_no_error_and_all_their_tokens(records, fault):
    for _, rec in (r for r in records if r[0] == fault):
        assert rec.error is None and rec.http_status == 200
        assert rec.completion_tokens == TOKENS and rec.finish_reason == "length"
        assert sum(c[1] == CONTENT for c in rec.chunks) == TOKENS
        if fault == "slow-headers":
            assert rec.first_token_ns - rec.sent_ns >= SLOW_HEADERS_S * 1e9


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.startswith(("reset", "truncated", "ollama-trunc"))])
def test_cut_streams_are_errors_and_keep_their_chunks(records, fault):
    for _, rec in (r for r in records if r[0] == fault):
        assert rec.error == FAULTS[fault]
        assert rec.error_kind == error_kind(rec.error) == ("connection reset" if fault.startswith("reset") else "truncated")
        kinds = [c[1] for c in rec.chunks]
        assert kinds == ([] if fault.startswith("ollama") else [ROLE]) + [CONTENT] * CUT_AFTER
        assert rec.first_token_ns is not None and rec.completion_tokens is None


@pytest.mark.parametrize("fault", ["http-429", "http-500", "http-503"])
def test_http_errors_keep_status_and_body(records, fault):
    for _, rec in (r for r in records if r[0] == fault):
        assert rec.http_status == int(fault[5:])
        assert rec.error.startswith(FAULTS[fault]) and f"fault {fault}" in rec.error
        assert rec.error_kind == error_kind(rec.error) == f"HTTP {fault[5:]}"
        assert rec.chunks == []


def test_a_hung_server_times_out(records):
    for _, rec in (r for r in records if r[0] == "hang"):
        assert rec.error == f"no complete response within {TIMEOUT_S:g} s" and rec.error_kind == error_kind(rec.error) == "timeout"
        # the timeout runs from the connect, which sent_ns follows (CI once saw 40 us of it)
        assert TIMEOUT_S - 0.05 <= (rec.end_ns - rec.sent_ns) / 1e9 < TIMEOUT_S + 0.5
        assert rec.http_status is None


def test_malformed_event_error_events_and_missing_final_chunk(records):
    for fault, rec in records:
        if fault == "malformed":
            assert rec.error.startswith(FAULTS[fault]) and rec.error_kind == error_kind(rec.error) == "malformed stream"
            assert sum(c[1] in TOKEN_KINDS for c in rec.chunks) == TOKENS  # the good events still count
        elif fault == "error-event":  # the server's own words win over "truncated"
            assert rec.error == FAULTS[fault] and rec.error_kind == "error event"  # not guessed from its words
            assert [c[1] for c in rec.chunks] == [ROLE, CONTENT]
        elif fault == "ollama-error":
            assert rec.error == FAULTS[fault] and rec.error_kind == "error event" and [c[1] for c in rec.chunks] == [CONTENT]
        elif fault == "no-final-chunk":  # all of the stream, but the HTTP body never ended
            assert rec.error == FAULTS[fault] and rec.completion_tokens == TOKENS and rec.error_kind == "incomplete body"


@pytest.mark.parametrize("fault", ["endless", "ollama-endless"])
def test_a_stream_that_ignores_its_length_is_cut_and_named(records, fault):
    for _, rec in (r for r in records if r[0] == fault):
        tokens = sum(c[1] in TOKEN_KINDS for c in rec.chunks)
        assert rec.error == f"server ignored the output length: {tokens} tokens for a target of {TOKENS}"
        assert rec.error_kind == error_kind(rec.error) == "ignored output length"
        # cut once it had sent 2 x 5 + 16 events, long before the 1 s timeout
        assert 2 * TOKENS <= tokens <= 200 and (rec.end_ns - rec.sent_ns) / 1e9 < TIMEOUT_S / 2


def test_ollamas_repeat_limit_is_named_not_taken_for_a_cut_stream(records):
    """Ollama 0.33 ends a looping generation cleanly, without its done line: the error says so."""
    for fault, rec in records:
        if fault == "ollama-repeat-limit":
            assert rec.error == FAULTS[fault] and rec.token_chunks == 31
            assert rec.error_kind == error_kind(rec.error) == "Ollama's token repeat limit"
