"""The guard's rules on constructed requests, with the clock set by the test: which failures stop a
trial and how, the default grace, and the bound on stored error rows (tests/integration/
test_trial_guard.py drives the same guard through a real client)."""

import pytest

from gaplab.measure import guard as guard_module
from gaplab.measure.guard import MAX_ERROR_ROWS, NO_LATENCY_GRACE_S, Rules, TrialGuard
from gaplab.measure.records import RequestRecord


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(guard_module.time, "monotonic", lambda: now[0])
    return now


def rec(error=None, seconds=1.0):
    return RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0, sent_ns=0, end_ns=int(seconds * 1e9),
                         error=error)


def test_failures_in_a_row_stop_the_trial_only_when_unbroken(clock):
    g = TrialGuard(Rules(max_seconds=60, stop_after_errors=5))
    for i in range(40):  # slow errors, 6 s apart, each followed by a success: never 5 in a row
        clock[0] += 6
        g._count(rec() if i % 2 else rec("HTTP 500: x"))
    assert g.failure is None
    for _ in range(4):
        clock[0] += 6
        g._count(rec("HTTP 500: boom"))
    assert g.failure is None
    clock[0] += 6
    g._count(rec("HTTP 500: boom"))
    assert g.failure == ("the server looks unhealthy: 5 failed requests in a row (load.stop_after_errors); "
                         "the last: HTTP 500: boom") and g.halt.is_set() and not g.sending()


def test_more_than_half_failing_in_five_seconds_stops_the_trial(clock):
    g = TrialGuard(Rules(max_seconds=60, stop_after_errors=1000))
    for i in range(10):  # half of 10 fail within 5 s: not more than half
        clock[0] += 0.1
        g._count(rec("refused") if i % 2 else rec())
    assert g.failure is None
    clock[0] += 0.1
    g._count(rec("refused"))  # 6 of 11... the oldest still in the window
    assert g.failure and "6 of the 11 requests that ended in the last 5 s failed" in g.failure


def test_the_window_forgets_what_ended_more_than_five_seconds_ago(clock):
    g = TrialGuard(Rules(max_seconds=60, stop_after_errors=1000))
    for _ in range(9):
        clock[0] += 0.1
        g._count(rec("refused"))
    clock[0] += 10  # the nine failures leave the window
    for _ in range(9):
        clock[0] += 0.1
        g._count(rec())
    clock[0] += 0.1
    g._count(rec("refused"))
    assert g.failure is None


def test_the_default_grace_is_twice_the_median_latency_at_least_one_second(clock):
    g = TrialGuard(Rules(max_seconds=60))
    assert g.grace() == NO_LATENCY_GRACE_S
    for s in (0.2, 0.3, 5.0):
        g._count(rec(seconds=s))
    assert g.grace() == pytest.approx(1.0)  # 2 x 0.3 is below the floor
    for s in (4.0, 6.0):
        g._count(rec(seconds=s))
    assert g.grace() == pytest.approx(8.0)
    assert TrialGuard(Rules(max_seconds=60, grace_seconds=0.25)).grace() == 0.25


def test_error_rows_past_the_bound_are_counted_not_kept(clock):
    g = TrialGuard(Rules(max_seconds=60, stop_after_errors=10**6))
    kept = 0
    for i in range(MAX_ERROR_ROWS + 50):
        clock[0] += 10  # one failure at a time in the window, after a success
        g._count(rec())
        kept += g._count(rec("HTTP 503: busy"))
    assert kept == MAX_ERROR_ROWS and g.dropped_errors == 50
    assert g.summary() == {"cut_requests": 0, "dropped_errors": 50, "stopped": None}
