"""One trial split across client processes (load.processes, load_processes.drive_processes)
against a server with injected delays: every request is one row with its own index, the users
(arrivals) are shared out between two child processes, all stamps are on the parent's clock,
open-loop arrivals keep their due times, records reach the parent while the trial runs, and a
child that fails, or Ctrl-C, ends the trial with an error instead of a hang."""

import os
import re
import signal
import threading
import time
from dataclasses import dataclass

import polars as pl
import pytest
import sse_server
import yaml

from gaplab.measure.client_processes import ClientProcessError, Job, drive_processes
from gaplab.measure.loadgen import arrival_offsets, run_sync
from gaplab.measure.trial import TrialPlan, run_trial
from gaplab.storage import store

# Each response takes 0.05 + 0.02 x 9 = 0.23 s.
TTFT_S, ITL_S, TOKENS = 0.05, 0.02, 10
# An arrival sent a whole response late, or a child that started the schedule at its own time
# (spawning one takes seconds), is the defect; a busy shared core delayed sends by up to 60 ms
# here, so 150 ms catches a 200 ms defect with room.
LATE_MS = 150
# No run should come near this; a child that failed without its parent noticing would hang forever.
HANG_S = 60


@pytest.fixture(scope="module")
def server():
    with sse_server.serving(TTFT_S, ITL_S, TOKENS) as url:
        yield url


@dataclass(frozen=True)
class Tagged:
    """Bodies that note in each record (its tag) which process sent it; the request with index
    `fail_at` raises (fail="raise") or ends its process at once (fail="exit")."""

    fail_at: int = -1
    fail: str = "raise"

    def payload(self, client):
        body = client.body("x", TOKENS, "fake")

        def payload(rec, seq):
            rec.tag = str(os.getpid())
            if rec.index == self.fail_at:
                if self.fail == "exit":
                    os._exit(3)
                raise RuntimeError("boom")
            return body
        return payload


def job(url: str, requests=Tagged(), **load) -> Job:
    return Job({"base_url": url, "api": "chat", "timeout": 30}, requests, **load)


def drive(j: Job, tick=None) -> tuple[list, int, int]:
    """Run the job in 2 processes (as run_trial does: run_sync, ticking); (records, before, after)."""
    records: list = []
    before = time.perf_counter_ns()
    run_sync(lambda: drive_processes(j, 2, records), tick=lambda: tick(records) if tick else None,
             tick_seconds=0.1)
    return records, before, time.perf_counter_ns()


def test_closed_loop_users_are_split_across_two_processes_into_one_run(server):
    seen = []  # how many records the parent held at each tick
    recs, before, after = drive(job(server, warmup=2, concurrency=4, min_requests=16, max_seconds=30),
                                tick=lambda records: seen.append(len(records)))
    assert not [r.error for r in recs if r.error]
    # one shared counter: 2 warmup and exactly min_requests measured requests, indices 0.. once each
    assert sorted(r.index for r in recs) == list(range(18))
    assert sorted(r.index for r in recs if r.warmup) == [0, 1]
    pids = {r.tag for r in recs}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    users = {pid: {r.user % 2 for r in recs if r.tag == pid} for pid in pids}
    assert sorted(map(sorted, users.values())) == [[0], [1]], users  # user u runs in process u % 2
    assert {r.user for r in recs if not r.warmup} == {0, 1, 2, 3}
    assert all(before < r.sent_ns < r.end_ns < after for r in recs)  # the children's stamps, on this clock
    assert any(0 < n < len(recs) for n in seen), seen  # records arrived while the trial ran


def test_open_loop_arrivals_keep_their_due_times_across_processes(server):
    offsets = arrival_offsets(20.0, 24, "poisson", seed=3)
    recs, before, after = drive(job(server, warmup=1, offsets=offsets))
    assert not [r.error for r in recs if r.error]
    warm = [r for r in recs if r.warmup]
    measured = sorted((r for r in recs if not r.warmup), key=lambda r: r.index)
    assert [r.index for r in warm] == [0] and [r.index for r in measured] == list(range(1, 25))
    start = measured[0].scheduled_ns
    assert before < start and max(r.end_ns for r in recs) < after
    # one schedule for both processes: every arrival due at its offset from one start
    assert [r.scheduled_ns - start for r in measured] == [int(o * 1e9) - int(offsets[0] * 1e9) for o in offsets]
    late = [(r.sent_ns - r.scheduled_ns) / 1e6 for r in measured]
    assert min(late) >= 0 and max(late) < LATE_MS, late
    by_pid = {pid: {(r.index - 1) % 2 for r in measured if r.tag == pid} for pid in {r.tag for r in measured}}
    assert sorted(map(sorted, by_pid.values())) == [[0], [1]], by_pid  # arrival k runs in process k % 2


def run_guarded(target):
    """target() on a thread, so that a hang fails the test instead of stopping the suite."""
    out: list = []

    def go():
        try:
            target()
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(HANG_S)
    assert not thread.is_alive(), f"no answer within {HANG_S} s: the parent hangs"
    return out[0] if out else None


@pytest.mark.parametrize("fail, expected", [
    ("raise", r"client process [01] failed: RuntimeError: boom"),
    ("exit", r"client process [01] ended \(exit code 3\) before its share of the trial did"),
])
def test_a_failing_child_is_an_error_in_the_parent_and_the_other_is_stopped(server, fail, expected):
    records: list = []
    # 200 requests of 0.23 s over 4 users would take 12 s: the failure at index 6 must end it early
    j = job(server, Tagged(fail_at=6, fail=fail), warmup=0, concurrency=4, min_requests=200, max_seconds=60)
    exc = run_guarded(lambda: run_sync(lambda: drive_processes(j, 2, records)))
    assert isinstance(exc, ClientProcessError) and re.search(expected, str(exc)), repr(exc)
    assert len({r.index for r in records}) == len(records) < 200
    assert any(r.error == "cancelled" for r in records)  # the other child was stopped; its requests kept


def test_ctrl_c_stops_both_children_and_keeps_what_they_finished(server):
    records: list = []
    sent = []

    def tick(records):
        # The trigger is a condition, not a moment: both children have finished requests. The load
        # (at most 60 s) cannot end first, however slowly a busy machine spawns the children; and
        # each tick presses Ctrl-C again until it is raised, as a user would.
        pids = {int(r.tag) for r in records}
        if len(pids) == 2 and len(sent) < 10:  # Ctrl-C in a terminal reaches the children too: they ignore it
            sent.append(1)
            for pid in (*pids, os.getpid()):
                os.kill(pid, signal.SIGINT)

    j = job(server, warmup=0, concurrency=4, min_requests=2000, max_seconds=60)
    # Ctrl-C as a terminal delivers it: a test run in the background (`cmd &` in a script)
    # inherits SIGINT ignored, and Python then raises nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sync(lambda: drive_processes(j, 2, records), tick=lambda: tick(records), tick_seconds=0.1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent
    finished = [r for r in records if r.error is None]
    cancelled = [r for r in records if r.error == "cancelled"]
    assert finished and len({r.index for r in records}) == len(records) < 2000
    assert {r.tag for r in cancelled} == {r.tag for r in finished}, "a child did not end its requests as rows"


def test_run_cell_with_processes_stores_one_run(server, tmp_path):
    """measure._drive takes the split when load.processes > 1: one stored run, each request once."""
    scenario = {"name": "procs", "runtimes": [{"name": "fake", "kind": "openai", "base_url": server}],
                "models": [{"name": "fake", "quants": ["none"]}],
                "workloads": [{"name": "w", "prompt_tokens": 4, "output_tokens": TOKENS}],
                "load": {"concurrency": [3], "requests": 9, "min_seconds": 0, "warmup": 1, "processes": 2}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    attach = {"base_url": server, "served_model": "fake", "runtime_version": "test"}
    summary = run_trial(TrialPlan(scenario=path, server=attach, data_dir=str(tmp_path / "raw")), progress=False)
    assert summary["status"] == "complete" and summary["requests"] == 9 and summary["errors"] == 0, summary
    rows = store.read_table(tmp_path / "raw", "requests")
    assert rows["run_id"].n_unique() == 1
    assert sorted(rows["request_index"]) == list(range(10))
    assert rows.filter(pl.col("warmup"))["request_index"].to_list() == [0]
