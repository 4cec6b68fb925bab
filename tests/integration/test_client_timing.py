"""The client's TTFT against a server with exactly injected delays: first token 200 ms
after the request arrives (a role-only chunk goes out at once, before it), then one
token every 20 ms, 50 tokens. Server and client run on different cores.

The truth for each request is what the server really did: the time from the request's
arrival to the write of its first token, which the server prints (same clock). Each
request's error is the client's TTFT minus that truth, so a server running late (at 64
streams, or on a busy machine) moves both and does not count against the client."""

import asyncio
import statistics

import pytest
import sse_server
from sse_server import measure, p99, pinned, ttft_errors

TTFT_MS, ITL_MS, TOKENS = 200, 20, 50
# Bounds, in ms. The defects they must catch are systematic: counting the role-only chunk
# as the first token makes every error about -200 ms (and the mean gap 24 ms: the 1,180 ms
# from role chunk to last token over 49 gaps); the openai SDK's parsed iterator was 59 ms
# late. Load only adds scattered delay: with another process spinning on either core (or
# unpinned), the worst run here had a median error of 6.1 ms and a p99 of 15 ms, at 64
# streams (quiet: 3 and 4 ms; at 1 stream 0.3 and 2 ms). So: median within 25 ms (under
# half the smallest defect, 4x the worst busy run), p99 of the size of the error within
# 100 ms (room for a preempted stream, still half the role-chunk defect), and the mean
# gap within 2 ms of 20 (a late first token of d ms moves it by only d/49; busy runs
# stayed within 0.18 ms).
MEDIAN_MS, P99_MS, GAP_MS = 25, 100, 2


@pytest.fixture(scope="module")
def delayed_server():
    proc, url = sse_server.start(TTFT_MS / 1000, ITL_MS / 1000, TOKENS)
    yield proc, url
    proc.stop()


@pytest.mark.slow
@pytest.mark.parametrize("streams, rounds", [(1, 40), (64, 3)])
def test_ttft_and_inter_chunk_time_match_the_injected_delays(delayed_server, streams, rounds):
    """One attempt: the bounds (above, with their reasons) are wide enough for a busy machine
    and narrow enough for a systematic lag."""
    proc, url = delayed_server
    with pinned(0):
        recs, truth, _ = asyncio.run(measure(proc, url, streams, rounds, TOKENS))
    assert all(r.error is None for r in recs.values()), next(r.error for r in recs.values() if r.error)
    assert all(r.completion_tokens == TOKENS and len(r.chunks) == TOKENS + 3 for r in recs.values())
    errors = ttft_errors(recs, truth)
    true_ms = statistics.median(sent - arrived for arrived, sent in truth.values()) / 1e6
    median, worst = statistics.median(errors), p99([abs(e) for e in errors])
    gap = statistics.mean((r.last_token_ns - r.first_token_ns) / 1e6 / (TOKENS - 1) for r in recs.values())
    print(f"\n{streams} streams: TTFT error median {median:.2f} ms, p99 |error| {worst:.2f} ms "
          f"(server truth median {true_ms:.1f} ms), mean inter-chunk {gap:.3f} ms")
    assert abs(true_ms - TTFT_MS) <= 50, "the harness server itself ran late"
    assert abs(median) <= MEDIAN_MS
    assert worst <= P99_MS
    assert abs(gap - ITL_MS) <= GAP_MS
