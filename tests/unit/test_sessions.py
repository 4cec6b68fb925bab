"""Server sessions: the order of starts, measurements and stops, and failures stored as such.
The real path (a llama.cpp server, papermill trials, quality runs) is covered by the
integration tests; here open_server is replaced to count starts and stops exactly."""

import subprocess
import time
from contextlib import contextmanager

import pytest

from gaplab.measure import records
from gaplab.runtimes import Server
from gaplab.runtimes.process import exit_status
from gaplab.spec.scenario import parse_scenario
from gaplab.storage import store
from gaplab.sweep import servers

SCENARIO = {"name": "t", "runtimes": [{"name": "a", "kind": "llamacpp"}, {"name": "b", "kind": "llamacpp"}],
            "models": [{"name": "m", "quants": ["Q4"]}],
            "workloads": [{"name": "w", "prompt_tokens": 8, "output_tokens": 8}], "load": {"concurrency": [1, 2]}}


@pytest.fixture
def events(monkeypatch):
    """The sessions' starts, runs and stops; each server's process is a real `sleep` a test may kill."""
    log = []

    @contextmanager
    def fake_open(cell):
        if cell.runtime.name == "b":
            raise RuntimeError("llama-server exited with code 1")
        log.append(("start", cell.server_key))
        proc = subprocess.Popen(["sleep", "60"])
        try:
            yield Server(base_url="http://127.0.0.1:9/v1", served_model=f"server:{cell.server_key}",
                         runtime_version="test", pid=proc.pid, watch_pids=[proc.pid])
        finally:
            proc.kill()
            proc.wait()
            log.append(("stop", cell.server_key))

    monkeypatch.setattr(servers, "open_server", fake_open)
    return log


class Recorder:
    def __init__(self, log, name, interrupt=False, kill=False):
        self.log, self.name, self.interrupt, self.kill = log, name, interrupt, kill

    def run(self, server):
        self.log.append(("run", self.name, server.served_model, server.restarts))
        if self.kill:  # and wait until the kernel has made it a zombie, as a trial ends after it noticed
            subprocess.run(["kill", "-9", str(server.pid)], check=True)
            deadline = time.monotonic() + 5
            while exit_status(server.pid) is None and time.monotonic() < deadline:
                time.sleep(0.01)
        if self.interrupt:
            raise KeyboardInterrupt

    def fail(self, error):
        self.log.append(("fail", self.name, error))


def cells():
    c = parse_scenario(SCENARIO).cells()
    return [x for x in c if x.runtime.name == "a"], [x for x in c if x.runtime.name == "b"]


def test_a_session_runs_its_measurements_on_one_server_then_stops_it(events):
    a, _ = cells()
    with servers.ServerPool() as s:
        assert s.serve(a[0], [Recorder(events, "t1"), Recorder(events, "t2")])
    key = a[0].server_key
    assert events == [("start", key), ("run", "t1", f"server:{key}", 0), ("run", "t2", f"server:{key}", 0),
                      ("stop", key)]


def test_kept_servers_are_started_once_and_stopped_at_close(events):
    a, _ = cells()
    with servers.ServerPool(keep=True) as s:
        s.serve(a[0], [Recorder(events, "t1")])
        s.serve(a[1], [Recorder(events, "t2")])  # same server, another concurrency
        assert [e[0] for e in events] == ["start", "run", "run"]
    assert events[-1] == ("stop", a[0].server_key)


def test_a_server_that_will_not_start_fails_each_measurement_with_the_reason(events):
    _, b = cells()
    with servers.ServerPool() as s:
        assert not s.serve(b[0], [Recorder(events, "t1"), Recorder(events, "t2")])
    assert events == [("fail", "t1", "RuntimeError: llama-server exited with code 1"),
                      ("fail", "t2", "RuntimeError: llama-server exited with code 1")]


def test_ctrl_c_in_a_measurement_still_stops_the_server(events):
    a, _ = cells()
    with pytest.raises(KeyboardInterrupt), servers.ServerPool() as s:
        s.serve(a[0], [Recorder(events, "t1", interrupt=True), Recorder(events, "t2")])
    assert [e[0] for e in events] == ["start", "run", "stop"]


def test_a_server_that_died_is_started_again_for_the_next_measurement(events):
    a, _ = cells()
    key = a[0].server_key
    with servers.ServerPool() as s:
        assert s.serve(a[0], [Recorder(events, "t1", kill=True), Recorder(events, "t2")])
    assert events == [("start", key), ("run", "t1", f"server:{key}", 0), ("stop", key), ("start", key),
                      ("run", "t2", f"server:{key}", 1), ("stop", key)]


def test_a_server_that_keeps_dying_is_not_started_past_max_restarts(events):
    a, _ = cells()
    with servers.ServerPool(keep=True, max_restarts=1) as s:
        assert s.serve(a[0], [Recorder(events, "t1", kill=True), Recorder(events, "t2", kill=True)])
        assert "was killed by signal 9" in s.dead(a[0])
        assert not s.serve(a[1], [Recorder(events, "t3")])
    assert [e[:2] for e in events] == [("start", a[0].server_key), ("run", "t1"), ("stop", a[0].server_key),
                                       ("start", a[0].server_key), ("run", "t2"), ("stop", a[0].server_key),
                                       ("fail", "t3")]
    assert "died 2 times" in events[-1][2] and "load.max_restarts = 1" in events[-1][2]


def test_the_run_identity_is_typed_and_names_every_stored_identity_column():
    a, _ = cells()
    ident = servers.run_identity(a[0], None, "r1", trial=2, series_id="s1")
    assert isinstance(ident, records.RunIdentity)
    assert list(ident.row()) == store.IDENTITY.names
    assert (ident.trial, ident.series_id, ident.runtime_version, ident.concurrency) == (2, "s1", "unknown", 1)
    other = servers.run_identity(a[0], None, "r2", cell_id="quality/x", workload="task:set")
    assert (other.cell_id, other.workload, other.series_id) == ("quality/x", "task:set", "r2")
    with pytest.raises(TypeError, match="not identity fields"):
        servers.run_identity(a[0], None, "r3", colour="blue")
