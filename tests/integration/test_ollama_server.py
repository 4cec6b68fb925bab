"""Against a real Ollama that gaplab starts itself (../shared/tools/ollama, a CPU build, or
OLLAMA_BIN or `ollama` on PATH), serving the SmolLM2 GGUF file the llama.cpp cells serve.
One thread, as the local llama.cpp cells: with two on a shared two-core machine its speed
collapses. Skipped, with the reason, where no Ollama binary is found."""

import json
import os
import signal
import socket
import subprocess
import time

import polars as pl
import psutil
import pytest
from conftest import SMOLLM2, write_scenario

from gaplab.measure.client import StreamClient
from gaplab.measure.loadgen import run_sync
from gaplab.measure.records import RequestRecord
from gaplab.measure.trial import TrialPlan, run_trial
from gaplab.provision import ollama as install
from gaplab.provision.models import model_info, model_path
from gaplab.report import speed, speed_prose
from gaplab.runtimes import ollama, open_server
from gaplab.spec.scenario import load_scenario
from gaplab.storage import store

pytestmark = pytest.mark.slow

OUTPUT_TOKENS = 12
RUNTIME = {"name": "ol", "kind": "ollama", "threads": 1, "ctx_size": 2048}
LOAD = {"concurrency": [1], "requests": 3, "min_seconds": 0, "warmup": 1, "max_seconds": 60}


@pytest.fixture(scope="module")
def binary():
    """The Ollama binary, and the SmolLM2 file it imports (make test provisions it)."""
    try:
        found = install.find_binary()
    except install.SetupError as exc:
        pytest.skip(f"no Ollama binary: {exc}")
    if not model_path("smollm2-135m", "Q4_1").exists():
        pytest.fail("the SmolLM2 model is not provisioned: run '.venv/bin/gaplab local setup --model smollm2-135m'")
    return found


@pytest.fixture(scope="module")
def own_store(tmp_path_factory):
    """Servers started here keep their models in a folder of this module's own, so the first
    sweep imports and the second finds the import (the cache's shared folder may have it)."""
    folder = tmp_path_factory.mktemp("ollama-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(install, "MODELS_DIR", folder / "models")
        mp.setattr(install, "HOME_DIR", folder / "home")
        mp.setattr(install, "IMPORTS", folder / "imports.json")
        yield folder


def _files(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def two_sweeps(binary, own_store, tmp_path_factory):
    """The same cell measured by two servers, one after the other (two sweeps)."""
    tmp = tmp_path_factory.mktemp("ollama")
    path = write_scenario(tmp, RUNTIME, (16, OUTPUT_TOKENS), LOAD)
    results, files = [], []
    for _ in range(2):
        results.append(run_trial(TrialPlan(scenario=path, data_dir=str(tmp / "raw")), progress=False))
        files.append(_files(own_store / "models"))
    return tmp / "raw", results, files


def test_native_stream_stores_the_servers_timings_per_request(two_sweeps):
    raw, results, _ = two_sweeps
    assert [r["status"] for r in results] == ["complete"] * 2 and sum(r["errors"] for r in results) == 0
    req = store.read_table(raw, "requests")
    assert req.height == 2 * 4 and req["error"].null_count() == req.height
    assert (req["completion_tokens"] == OUTPUT_TOKENS).all()  # num_predict, beside num_thread and num_ctx
    assert (req["server_predicted_n"] == req["completion_tokens"]).all()
    for col in ("server_prompt_n", "server_prompt_ms", "server_predicted_ms", "server_load_ms", "server_total_ms"):
        assert req[col].null_count() == 0, col
    assert (req["server_predicted_ms"] > 0).all() and (req["server_total_ms"] >= req["server_predicted_ms"]).all()
    # one chunk per token: the client's count and the server's agree
    assert (req["n_token_chunks"] == req["completion_tokens"]).all()


def test_run_says_what_ran_and_where_the_model_sits(two_sweeps):
    raw, _, _ = two_sweeps
    run = store.read_table(raw, "run")
    assert run["runtime_version"].str.starts_with("Ollama ").all()
    assert run["engine_version"].str.len_chars().min() > 0
    assert run["launch_command"].str.contains("OLLAMA_NUM_PARALLEL=1 OLLAMA_CONTEXT_LENGTH=2048").all()
    # and the runner Ollama started for the model: its engine's own flags, beside llama.cpp cells'
    assert run["launch_command"].str.contains(r"; runner: \S+/llama-server .* -c 2048 -np 1 .* -t 1 ").all()
    assert set(run["model_sha256"]) == {model_info("smollm2-135m", "Q4_1")["sha256"]}
    # /api/ps before and after each trial: all of it in memory, none in GPU memory (a CPU build),
    # with the context the requests asked for (num_ctx)
    assert (run["model_bytes_loaded"] > 0).all() and (run["model_bytes_gpu"] == 0).all()
    for meta in map(json.loads, run["meta_json"]):
        after = meta["ollama_placement"]["after"]
        assert after["cpu_only"] and after["context_length"] == RUNTIME["ctx_size"]
        assert meta["server"]["served_digest"] == json.loads(install.IMPORTS.read_text())["smollm2-135m:q4_1"]["digest"]
    # the page: one sentence that the CPU held it, no GPU warning per cell on a machine with no GPU
    story = speed_prose.placement_story(speed.runs(raw))
    assert "held every model on the CPU" in story and "GPU memory:" not in story


def test_cold_start_keeps_the_servers_start_and_the_models_load_apart(two_sweeps):
    run = store.read_table(two_sweeps[0], "run")
    cols = ["server_started_ns", "server_healthy_ns", "server_loaded_ns", "server_first_token_ns"]
    assert run.select(cols).null_count().row(0) == (0, 0, 0, 0)
    for row in run.select(cols).iter_rows():
        assert row[0] < row[1] < row[2] < row[3]
    # the import (seconds: the GGUF file is copied) is in neither run's cold start: a server that
    # imported was stopped and a fresh one measured
    from gaplab.report.cold_start import cold_starts

    starts = cold_starts(two_sweeps[0])
    assert starts.height == 2 and (starts["to_loaded_s"] > starts["to_healthy_s"]).all()
    assert (starts["to_healthy_s"] < 5).all(), starts


def test_second_sweep_reuses_the_imported_model(two_sweeps, own_store):
    _, _, files = two_sweeps
    assert any("blobs" in str(p) for p in files[0])  # the first imported into this store
    assert files[1] == files[0]  # the second wrote nothing there: no second import


def _stream(server, protocol: str, api: str, url: str, prompt="Say hello.") -> RequestRecord:
    async def one():
        rec = RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0)
        async with StreamClient(url, api, None, 120, protocol) as client:
            extra = server.extra_body if protocol == "ollama" else {}
            return await client.stream(client.body(prompt, OUTPUT_TOKENS, server.served_model, extra), rec)

    return run_sync(one)


def test_both_apis_stream_and_the_runner_gets_the_threads(binary, own_store, tmp_path):
    path = write_scenario(tmp_path, RUNTIME, (16, OUTPUT_TOKENS), LOAD)
    cell = load_scenario(path).cells()[0]
    with open_server(cell) as server:
        assert runner_threads(server) == ["1"]
        native_chat = _stream(server, "ollama", "chat", server.base_url)
        native_generate = _stream(server, "ollama", "completions", server.base_url, "Once upon a time")
        for rec in (native_chat, native_generate):
            assert rec.error is None and rec.completion_tokens == OUTPUT_TOKENS
            assert rec.server_timings["eval_count"] == OUTPUT_TOKENS
        for api in ("chat", "completions"):  # /v1: usage in a last chunk; no option to force the length
            rec = _stream(server, "openai", api, server.openai_url)
            assert rec.error is None and 0 < rec.completion_tokens <= OUTPUT_TOKENS, rec.error
            assert rec.first_token_ns is not None and rec.prompt_tokens > 0
        # /v1 carries no options: the served model has them as its defaults, so the runner keeps -t 1
        assert runner_threads(server) == ["1"]


def test_task_accuracy_asks_through_the_openai_endpoint(binary, own_store, tmp_path):
    """Quality asks through the openai SDK: to Ollama's /v1 root, by the served name."""
    from gaplab import quality
    from gaplab.report import quality as qframes

    eval_set = tmp_path / "mine.jsonl"
    eval_set.write_text("".join(json.dumps(i) + "\n" for i in quality.make_eval_set(3, 4)))
    path = write_scenario(tmp_path, RUNTIME, (16, OUTPUT_TOKENS), LOAD)
    res = quality.measure(path, raw_dir=tmp_path / "raw", eval_path=eval_set, progress=False)
    assert res.failed == [] and res.task_runs == 1
    task = qframes.task_frame(qframes.read_quality(tmp_path / "raw")[0])
    assert task["runtime"].to_list() == ["ol"] and task["questions"].to_list() == [4]
    answers = qframes.read_quality(tmp_path / "raw")[1].filter(pl.col("workload") == "task:mine")
    # every item answered (SmolLM2-135M gets most wrong: grading is tested in tests/unit/test_quality.py)
    assert answers.height == 4 and answers["error"].null_count() == 4 and answers["correct"].null_count() == 0
    assert (answers["completion"].str.len_chars() > 0).all()


def runner_threads(server) -> list[str]:
    """The -t of each llama-server runner of the server."""
    cmds = [p.cmdline() for p in psutil.Process(server.pid).children(recursive=True) if p.name() == "llama-server"]
    return [c[c.index("-t") + 1] if "-t" in c else "default" for c in cmds]


def test_a_runner_that_dies_is_a_dead_server(binary, own_store, tmp_path):
    """Ollama would start a new runner on the next request, reloading the model mid-trial: gaplab
    watches the runner it found once the model was loaded, as it watches the server."""
    from gaplab.runtimes.process import first_dead

    path = write_scenario(tmp_path, RUNTIME, (16, OUTPUT_TOKENS), LOAD)
    with open_server(load_scenario(path).cells()[0]) as server:
        runners = [p.pid for p in psutil.Process(server.pid).children(recursive=True) if p.name() == "llama-server"]
        assert len(runners) == 1 and server.watch_pids == [server.pid, runners[0]]
        assert first_dead(server.watch_pids) is None
        os.kill(runners[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while first_dead(server.watch_pids) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first_dead(server.watch_pids) in (f"process {runners[0]} exited",
                                                 f"process {runners[0]} was killed by signal 9 (SIGKILL)")


def test_a_model_the_attached_server_lacks_is_one_line(binary, own_store, tmp_path):
    path = write_scenario(tmp_path, RUNTIME, (16, OUTPUT_TOKENS), LOAD)
    with open_server(load_scenario(path).cells()[0]) as server:
        attached = write_scenario(tmp_path, {"name": "at", "kind": "ollama", "base_url": server.base_url,
                                             "served_names": {"smollm2-135m": "llama3:70b"}}, (16, 4), LOAD)
        with pytest.raises(RuntimeError, match=r"models.smollm2-135m: Ollama at .* has \[.*'smollm2-135m:q4_1'.*\], "
                                               r"not 'llama3:70b'"):
            run_trial(TrialPlan(scenario=attached, data_dir=str(tmp_path / "raw")), progress=False)


def test_extra_body_options_keep_the_forced_length_on_an_attached_server(binary, own_store, tmp_path, gaplab_cli):
    """Issue 28's setup: Ollama started by hand, attached, with its threads pinned through
    extra_body's options. Those options once replaced gaplab's own, num_predict with them, and the
    first request generated 5,600 tokens. Now no request passes the workload's 48 (the model may
    still end one sooner: Ollama has no ignore_eos, and a CI run saw one stop at 12)."""
    path = write_scenario(tmp_path, RUNTIME, (16, OUTPUT_TOKENS), LOAD)
    with open_server(load_scenario(path).cells()[0]) as server:
        runtime = {"name": "at", "kind": "ollama", "base_url": server.base_url,
                   "served_names": {"smollm2-135m": server.served_model},
                   "extra_body": {"options": {"num_thread": 1, "num_ctx": 2048}}}
        attached = write_scenario(tmp_path, runtime, (16, 48), {**LOAD, "requests": 4, "max_seconds": 30})
        t0 = time.monotonic()
        result = run_trial(TrialPlan(scenario=attached, data_dir=str(tmp_path / "raw")), progress=False)
        assert time.monotonic() - t0 < 30 + 10
        refused = write_scenario(tmp_path, {**runtime, "extra_body": {"options": {"num_thread": 1, "num_predict": -1}}},
                                 (16, 48), LOAD)
        res = subprocess.run([*gaplab_cli, "run", str(refused), "--data-dir", str(tmp_path / "raw")],
                             capture_output=True, text=True, timeout=120)
    assert result["status"] == "complete" and result["errors"] == 0
    req = store.read_table(tmp_path / "raw", "requests")
    assert req.height == 5 and (req["completion_tokens"] <= 48).all() and (req["completion_tokens"] == 48).any()
    assert (req["server_predicted_n"] == req["completion_tokens"]).all()  # Ollama's own eval_count
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "extra_body: options.num_predict is set by gaplab for kind 'ollama'" in res.stderr, res.stderr


def test_a_model_file_that_does_not_exist_is_one_line_naming_it(binary, tmp_path, gaplab_cli):
    path = write_scenario(tmp_path, RUNTIME, (16, 4), LOAD, models=({**SMOLLM2, "quants": ["Q5_K_M"]},))
    res = subprocess.run([*gaplab_cli, "run", str(path), "--data-dir", str(tmp_path / "raw")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "smollm2-135m-Q5_K_M.gguf does not exist" in res.stderr and "Traceback" not in res.stderr


def test_a_port_already_taken_is_one_line_and_leaves_nothing(binary, own_store, tmp_path, monkeypatch):
    """The port chosen was free, then something else took it before Ollama listened."""
    path = write_scenario(tmp_path, RUNTIME, (16, 4), LOAD)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(ollama, "free_port", lambda: taken.getsockname()[1])
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        with pytest.raises(RuntimeError, match=r"ollama exited with code 1: .*address already in use"):
            with open_server(load_scenario(path).cells()[0]):
                pass
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def _servers_of(pid: int) -> list[psutil.Process]:
    """The ollama and llama-server processes under a gaplab command."""
    return [p for p in psutil.Process(pid).children(recursive=True) if p.name() in ("ollama", "llama-server")]


def _gone(procs: list[psutil.Process], seconds: float) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=seconds)
    return all(p.status() == psutil.STATUS_ZOMBIE for p in alive if p.is_running())


def _long_run(tmp_path, gaplab_cli, command: str, **popen):
    path = write_scenario(tmp_path, RUNTIME, (16, 24), {"concurrency": [1], "requests": 1000, "min_seconds": 60,
                                                         "max_seconds": 60, "warmup": 0, "trials": 1,
                                                         "max_trials": 1})
    proc = subprocess.Popen([*gaplab_cli, command, str(path), "--data-dir", str(tmp_path / "raw")], **popen)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the server and its runner run and requests are stored
        procs = _servers_of(proc.pid)
        if {p.name() for p in procs} == {"ollama", "llama-server"} and list(tmp_path.rglob("*.part-*.parquet")):
            return proc, procs
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("no Ollama runner within 120 s")


def test_ctrl_c_leaves_no_ollama_or_runner(binary, tmp_path, gaplab_cli):
    proc, procs = _long_run(tmp_path, gaplab_cli, "sweep", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert _gone(procs, 5), [(p.pid, p.name()) for p in procs]


def test_sigkill_of_gaplab_leaves_no_ollama_or_runner(binary, tmp_path, gaplab_cli):
    """SIGKILL leaves Ollama's runner running unless its group is killed: the guard does that."""
    proc, procs = _long_run(tmp_path, gaplab_cli, "run", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _gone(procs, 10), [(p.pid, p.name()) for p in procs]


def test_setup_reports_the_binary_and_its_version(binary, llama_ready, gaplab_cli):
    res = subprocess.run([*gaplab_cli, "local", "setup", "--runtime", "ollama", "--model", "smollm2-135m"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"gaplab: Ollama {install.binary_version(binary)} at {binary}" in res.stdout


def test_no_binary_is_one_line_saying_how_to_get_it(tmp_path, gaplab_cli):
    env = {**os.environ, "OLLAMA_BIN": str(tmp_path / "nothing")}
    res = subprocess.run([*gaplab_cli, "local", "setup", "--runtime", "ollama"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert f"OLLAMA_BIN: {tmp_path / 'nothing'} is not an executable file" in res.stderr


def test_no_ollama_anywhere_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("OLLAMA_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(install, "SHARED_BIN", tmp_path / "shared" / "ollama")
    with pytest.raises(install.SetupError, match="^Ollama is not installed: get it from https://ollama.com/download"):
        install.find_binary()
