"""The client's TTFT against a server with exactly injected delays: first token 200 ms
after the request arrives (a role-only chunk goes out at once, before it), then one
token every 20 ms, 50 tokens. Server and client run on different cores.

The truth for each request is what the server really did: the time from the request's
arrival to the write of its first token, which the server prints (same clock). At 64
streams the server itself runs a few ms late; that is the harness, not the client."""

import json

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gaplab.client import RequestRecord, StreamClient
from gaplab.runtimes.llamacpp import free_port, stop_process

SERVER = Path(__file__).resolve().parents[1] / "support" / "sse_server.py"
TTFT_MS, ITL_MS, TOKENS = 200, 20, 50


def start_sse_server(ttft_s: float, itl_s: float, tokens: int, cpu: int | None = 1):
    port = free_port()
    args = [sys.executable, str(SERVER), str(port), str(ttft_s), str(itl_s), str(tokens)]
    if cpu is not None and (os.cpu_count() or 1) > 1:
        args.append(str(cpu))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "SSE_SERVER_LOG": "1"})
    assert proc.stdout.readline().strip() == "ready"
    return proc, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def delayed_server():
    proc, url = start_sse_server(TTFT_MS / 1000, ITL_MS / 1000, TOKENS)
    yield proc, url
    stop_process(proc)


async def measure(url: str, streams: int, rounds: int) -> dict[str, RequestRecord]:
    out = {}
    async with StreamClient(url, "chat") as client:
        for k in range(rounds):
            recs = {f"r{k}-{i}": RequestRecord(index=i, user=i, warmup=False, scheduled_ns=time.perf_counter_ns())
                    for i in range(streams)}
            await asyncio.gather(*(client.stream(client.body(key, TOKENS, "fake"), r) for key, r in recs.items()))
            out.update(recs)
    return out


def p99(xs):
    return statistics.quantiles(xs, n=100, method="inclusive")[98]


def one_attempt(proc, url: str, streams: int, rounds: int) -> dict:
    pin = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1
    if pin:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {0})
    try:
        recs = asyncio.run(measure(url, streams, rounds))
    finally:
        if pin:
            os.sched_setaffinity(0, before)
    truth = {}
    for _ in recs:
        line = json.loads(proc.stdout.readline())
        truth[line["id"]] = (line["first_token_sent_ns"] - line["arrived_ns"]) / 1e6
    recs_list = list(recs.values())
    assert all(r.error is None for r in recs_list), recs_list[0].error
    assert all(r.completion_tokens == TOKENS and len(r.chunks) == TOKENS + 3 for r in recs_list)
    measured = [(r.first_token_ns - r.sent_ns) / 1e6 for r in recs.values()]
    true = [truth[key] for key in recs]
    gaps = [(r.last_token_ns - r.first_token_ns) / 1e6 / (TOKENS - 1) for r in recs_list]
    return {"median": statistics.median(measured), "true_median": statistics.median(true),
            "p99": p99(measured), "true_p99": p99(true), "gap": statistics.mean(gaps)}


def within_bounds(m: dict) -> bool:
    # the role-only chunk arrived ~200 ms earlier and must not count as the first token
    return (abs(m["median"] - m["true_median"]) <= 5 and abs(m["p99"] - m["true_p99"]) <= 20
            and abs(m["gap"] - ITL_MS) <= 1)


@pytest.mark.slow
@pytest.mark.parametrize("streams, rounds", [(1, 40), (64, 3)])
def test_ttft_and_inter_chunk_time_match_the_injected_delays(delayed_server, streams, rounds):
    """Other load on this shared 2-core machine only adds delay, never removes it: a client
    that is accurate meets the bounds in a quiet attempt, so up to three attempts are made.
    A client with a systematic lag (the openai SDK's iterator was 59 ms late) fails all three."""
    proc, url = delayed_server
    for attempt in range(3):
        m = one_attempt(proc, url, streams, rounds)
        print(f"\n{streams} streams, attempt {attempt + 1}: TTFT median {m['median']:.2f} ms (truth "
              f"{m['true_median']:.2f}), p99 {m['p99']:.2f} ms (truth {m['true_p99']:.2f}), "
              f"mean inter-chunk {m['gap']:.3f} ms")
        assert abs(m["true_median"] - TTFT_MS) <= 10 or attempt < 2, "the harness server itself ran late"
        if within_bounds(m):
            break
    assert abs(m["median"] - m["true_median"]) <= 5
    assert abs(m["p99"] - m["true_p99"]) <= 20
    assert abs(m["gap"] - ITL_MS) <= 1
