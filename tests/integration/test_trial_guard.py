"""A trial stops where it should, against tests/support/fault_server.py answering every request
with one fault: a server that fails every request stops the trial early as failed, an endless
stream costs one row per request, a hung request is cut after the trial's bound and its grace,
and a server process that dies stops the trial within a second. Real client, real sockets."""

import asyncio
import subprocess
import time

import fault_server
import pytest
from fault_server import TOKENS

from gaplab.measure.client import StreamClient
from gaplab.measure.guard import CUT_AT_END, CUT_STOPPED, Rules, TrialGuard
from gaplab.measure.loadgen import closed_loop, one_by_one, open_loop

USERS = 4


def drive(every: str, rules: Rules, kill_after: float | None = None, loop: str = "closed"):
    """One trial's load against a server answering every request with `every`; returns (records,
    guard, seconds). kill_after: kill rules.pids[0] after that many seconds."""

    async def go():
        server = await fault_server.start(every=every)
        root = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        records, guard = [], TrialGuard(rules)

        def payload(rec, seq):
            rec.target_output_tokens = TOKENS
            return client.body("ok", TOKENS, "fake")

        async def kill():
            await asyncio.sleep(kill_after)
            subprocess.run(["kill", "-9", str(rules.pids[0])], check=True)

        killer = asyncio.create_task(kill()) if kill_after is not None else None
        t0 = time.monotonic()
        async with StreamClient(root, "chat", timeout=300) as client:
            if loop == "closed":
                await closed_loop(client, payload, USERS, 2, 10_000, 0, rules.max_seconds, records, guard=guard)
            else:
                await one_by_one(client, payload, 1, records, guard=guard)
                await open_loop(client, payload, [i * 0.05 for i in range(40)], records, first_index=1, guard=guard)
        seconds = time.monotonic() - t0
        if killer:
            killer.cancel()
        server.close()
        await server.wait_closed()
        return records, guard, seconds

    return asyncio.run(go())


def test_a_server_that_fails_every_request_stops_the_trial_early_as_failed():
    records, guard, seconds = drive("http-500", Rules(max_seconds=30, stop_after_errors=20))
    assert guard.failure.startswith("the server looks unhealthy: ") and "HTTP 500" in guard.failure
    # without the guard, 4 users resending at once sent thousands of requests in 30 s
    assert len(records) <= 20 + USERS and seconds < 10
    assert all(r.error.startswith("HTTP 500") for r in records)


def test_a_failing_user_waits_before_resending():
    records, guard, _ = drive("http-500", Rules(max_seconds=30, stop_after_errors=12))
    by_user = {}
    for r in sorted(records, key=lambda r: r.sent_ns):
        by_user.setdefault(r.user, []).append(r)
    gaps = [(b.sent_ns - a.end_ns) / 1e9 for rs in by_user.values() for a, b in zip(rs, rs[1:])]
    assert gaps and min(gaps) >= 0.009  # MIN_BACKOFF_S: no request is resent the moment one fails


def test_an_endless_stream_costs_one_row_per_request():
    records, guard, seconds = drive("endless", Rules(max_seconds=2, stop_after_errors=1000))
    assert records and all(r.error.startswith("server ignored the output length") for r in records)
    assert len({r.index for r in records}) == len(records)  # one row each, and each one cut
    # every request failing, the error-rate rule stops the trial once 10 have ended
    assert guard.failure and "of the 10 requests that ended in the last 5 s failed" in guard.failure
    assert seconds < 2


@pytest.mark.parametrize("loop", ["closed", "open"])
def test_a_hung_request_is_cut_at_the_bound_plus_its_grace(loop):
    records, guard, seconds = drive("hang", Rules(max_seconds=1.0, grace_seconds=0.5), loop=loop)
    # the warmup phase and the measured one are each bounded by 1 s + 0.5 s; the request timeout is 300 s
    assert 2 * 1.5 <= seconds < 2 * 1.5 + 1.5
    assert records and all(r.error == CUT_AT_END for r in records) and guard.cut == len(records)
    assert guard.failure is None  # a bound reached is not a failed trial


def test_a_dead_server_process_stops_the_trial_within_a_second():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        records, guard, seconds = drive("hang", Rules(max_seconds=30, pids=(proc.pid,)), kill_after=1.0)
    finally:
        proc.kill()
        proc.wait()
    assert guard.failure and f"process {proc.pid} was killed by signal 9 (SIGKILL)" in guard.failure
    assert seconds < 1.0 + 1.0
    assert records and all(r.error == CUT_STOPPED for r in records)
