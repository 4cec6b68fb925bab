"""Servers someone else started, attached by URL: a real llama-server (the cached build), the
real Ollama (../shared/tools/ollama) and vLLM's CPU build, each started here as a plain process
in its own process group, outside gaplab, on a free port. A sweep attaches to them as `kind: openai` (llama-server,
and Ollama's OpenAI root) and `kind: ollama`; the stored runs must name the engine and its
version as the servers themselves report them, and the report's frames must hold what only the
server could say: its own per-request timings (or, for vLLM, its histograms) in the latency
parts, and the model's bytes, from the server's API, in the roofline. The Ollama tests are
skipped, with the reason, where no Ollama is found."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import polars as pl
import pytest
import yaml
from conftest import SMOLLM2, write_scenario

from gaplab.analysis import metrics
from gaplab.capability import judges, probes
from gaplab.machine.hardware import machine_id
from gaplab.machine.modelfile import gguf_traffic, hf_traffic
from gaplab.measure.trial import TrialPlan, run_trial
from gaplab.provision import llama_build, vllm_env
from gaplab.provision import ollama as install
from gaplab.provision.models import model_path
from gaplab.report import capability, claims, decompose, roofline, speed
from gaplab.runtimes import vllm
from gaplab.spec.scenario import RuntimeSpec
from gaplab.storage import store
from gaplab.sweep.rounds import sweep

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
LOAD = {"concurrency": [1], "requests": 3, "min_seconds": 0, "warmup": 1, "max_seconds": 60, "trials": 2,
        "max_trials": 2}  # two trials: the claims between the attached servers get intervals


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _wait(url: str, proc: subprocess.Popen, log, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):  # 2xx, whatever the body (vLLM's /health has none)
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer in {timeout} s: {log.read_text()[-2000:]}")


def _start(cmd: list[str], log, env=None) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (Ollama's runners are its children), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def llama_url(llama_ready, tmp_path_factory):
    """A llama-server started by hand, as its users start it: -np 2, --metrics, the model's alias."""
    log = tmp_path_factory.mktemp("llama-attached") / "server.log"
    port = _port()
    proc = _start([str(llama_build.tool_path("llama-server")), "-m", str(model_path(MODEL, "Q4_1")), "--host",
                   "127.0.0.1", "--port", str(port), "-np", "2", "-c", "2048", "-t", "1", "--metrics", "-a", MODEL],
                  log)
    try:
        _wait(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def ollama_url(tmp_path_factory):
    """Ollama started as a service would be, with SmolLM2's GGUF imported by `ollama create`."""
    try:
        binary = install.find_binary()
    except install.SetupError as exc:
        pytest.skip(f"no Ollama binary: {exc}")
    folder = tmp_path_factory.mktemp("ollama-attached")
    port = _port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(folder / "models"),
           "HOME": str(folder), "OLLAMA_NO_CLOUD": "1", "OLLAMA_NUM_PARALLEL": "1"}
    proc = _start([str(binary), "serve"], folder / "server.log", env)
    try:
        _wait(f"http://127.0.0.1:{port}/api/version", proc, folder / "server.log")
        (folder / "Modelfile").write_text(f"FROM {model_path(MODEL, 'Q4_1').resolve()}\n")
        subprocess.run([str(binary), "create", MODEL, "-f", str(folder / "Modelfile")], env=env, check=True,
                       capture_output=True, timeout=300)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def swept(llama_url, ollama_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attach")
    runtimes = [{"name": "llama-url", "kind": "openai", "base_url": llama_url + "/v1",
                 "extra_body": {"ignore_eos": True}},
                {"name": "ollama-native", "kind": "ollama", "base_url": ollama_url,
                 "extra_body": {"options": {"num_thread": 1}}},
                {"name": "ollama-openai", "kind": "openai", "base_url": ollama_url + "/v1",
                 "served_names": {MODEL: f"{MODEL}:latest"}}]
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump({"name": "attach", "runtimes": runtimes, "models": [SMOLLM2], "load": LOAD,
                                    "workloads": [{"name": "p16-o8", "prompt_tokens": 16, "output_tokens": 8}]}))
    sweep(path, raw_dir=tmp / "raw", out_dir=tmp / "runs", progress=False)
    return tmp / "raw"


def test_runs_name_the_engine_and_version_each_server_reports(swept, llama_url, ollama_url):
    raw = swept
    runs = store.read_table(raw, "run").sort("runtime")
    assert runs["status"].to_list() == ["complete"] * 6, runs.select("runtime", "error").to_dicts()
    by = {r["runtime"]: r for r in runs.iter_rows(named=True)}
    build = _get(llama_url + "/props")["build_info"]
    version = _get(ollama_url + "/api/version")["version"]
    assert by["llama-url"]["engine"] == "llamacpp"
    assert by["llama-url"]["runtime_version"] == f"llama.cpp {build} behind an OpenAI-compatible URL"
    assert by["ollama-native"]["engine"] == "ollama" and by["ollama-native"]["runtime_version"] == f"Ollama {version}"
    # Ollama's OpenAI root is still Ollama: /api/version answers beside it
    assert by["ollama-openai"]["engine"] == "ollama"
    assert by["ollama-openai"]["runtime_version"] == f"Ollama {version} behind an OpenAI-compatible URL"
    assert by["ollama-openai"]["engine_version"] == by["ollama-native"]["engine_version"] == install.engine(version)


def test_the_model_bytes_come_from_each_servers_api(swept, llama_url, ollama_url):
    raw = swept
    by = {r["runtime"]: r for r in store.read_table(raw, "run").iter_rows(named=True)}
    listed = _get(llama_url + "/v1/models")["data"][0]["meta"]
    own = gguf_traffic(model_path(MODEL, "Q4_1"))
    assert by["llama-url"]["weight_bytes"] == listed["size"] > 0  # the tensors, less than the file
    assert by["llama-url"]["kv_bytes_per_token"] == own.kv_bytes_per_token  # the GGUF /props names
    size = next(m["size"] for m in _get(ollama_url + "/api/tags")["models"] if m["name"] == f"{MODEL}:latest")
    for name in ("ollama-native", "ollama-openai"):
        assert by[name]["weight_bytes"] == size > 0
        assert by[name]["kv_bytes_per_token"] == own.kv_bytes_per_token  # from /api/show's model_info


def test_the_report_frames_hold_the_servers_own_parts_and_a_roofline(swept):
    raw = swept
    requests = speed.measured_requests(raw)
    parts = decompose.trial_parts(requests, raw)
    by = {r["runtime"]: r for r in parts.iter_rows(named=True)}
    for name in ("llama-url", "ollama-native"):  # llama.cpp's timings, Ollama's eval durations, per request
        assert by[name]["timed_by"] == "server" and by[name]["prompt"] > 0 and by[name]["decode_rest"] > 0
    assert by["ollama-openai"]["timed_by"] == "client"  # Ollama's OpenAI stream carries no timings
    table = decompose.sources(parts["engine"].unique().sort().to_list())
    assert table.columns == ["part", "llama.cpp", "Ollama"]
    roof = roofline.roofline(speed.estimates(metrics.trial_summary(requests)), requests, raw, machine_id())
    assert sorted(roof["runtime"].to_list()) == ["llama-url", "ollama-native", "ollama-openai"]
    assert roof.filter(pl.col("weight_mb") > 0)["bound_tok_s"].min() > 0
    assert roof["pct"].is_finite().all()


def page_tables(raw, tmp_path) -> dict[str, str]:
    """The tables of the page on where the time goes (notebook 40, run by papermill as the site runs
    it) for this store, by their labels."""
    import papermill as pm

    from gaplab.spec.config import NOTEBOOKS_DIR, ROOT

    out = tmp_path / "40.ipynb"
    pm.execute_notebook(str(NOTEBOOKS_DIR / "40-where-the-time-goes.ipynb"), str(out), parameters={"data_dir": str(raw)},
                        cwd=str(ROOT), progress_bar=False, log_output=False)
    tables = {}
    for cell in json.loads(out.read_text())["cells"]:
        label = next((line.split(":", 1)[1].strip() for line in "".join(cell["source"]).splitlines()
                      if line.startswith("#| label:")), None)
        if label and label.startswith("tbl-"):
            tables[label] = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in cell.get("outputs", []))
    return tables


def test_the_page_shows_each_engines_parts_and_a_roofline(swept, tmp_path):
    tables = page_tables(swept, tmp_path)
    assert "llama.cpp" in tables["tbl-sources"] and "Ollama" in tables["tbl-sources"]
    for name in ("llama-url", "ollama-native"):
        assert any(name in row and "| server |" in row for row in tables["tbl-parts"].splitlines()), name
    assert all(name in tables["tbl-roofline"] for name in ("llama-url", "ollama-native", "ollama-openai"))


def test_the_capability_matrix_and_the_claims_cover_every_attached_server(swept):
    raw = swept
    names = ["llama-url", "ollama-native"]  # one per engine: the probes take a minute a server here
    found, skipped = probes.measure(raw.parent / "scenario.yaml", raw, runtimes=names)
    assert len(found) == 2 and skipped == 0
    matrix = capability.measured(raw, machine_id())
    assert sorted(matrix["runtime"].unique()) == names
    assert matrix.group_by("runtime").len()["len"].to_list() == [len(judges.CAPABILITIES)] * 2  # every probe answered
    assert not matrix["verdict"].is_in(list(judges.BROKEN)).any()
    verdict = {(r["runtime"], r["capability"]): r["verdict"] for r in matrix.iter_rows(named=True)}
    assert verdict[("llama-url", "streamed usage")] == verdict[("llama-url", "forced output length")] == judges.PASS
    table = claims.claims_table(metrics.trial_summary(speed.measured_requests(raw)))
    faster = table.filter(pl.col("kind") == "faster")
    assert {frozenset((r["a"].split(" · ")[0], r["b"].split(" · ")[0])) for r in faster.iter_rows(named=True)} >= {
        frozenset(p) for p in (("llama-url", "ollama-native"), ("ollama-native", "ollama-openai"))}
    assert (faster["trials_a"] == 2).all() and faster["ratio_lo"].is_not_null().all()  # intervals, not one trial
    assert faster["text"].str.len_chars().min() > 20


@pytest.fixture(scope="module")
def vllm_url(llama_ready, tmp_path_factory):
    """vLLM's CPU build started by hand on the model's converted folder (float32, as converted)."""
    if not vllm_env.installed():
        pytest.fail("vLLM is not installed: run 'make test' (or 'gaplab local setup --runtime vllm')")
    vllm_env.convert(MODEL, "float32")
    spec = RuntimeSpec(name="v", kind="vllm", parallel=2, threads=1, ctx_size=1024, enforce_eager=True)
    port = _port()
    log = tmp_path_factory.mktemp("vllm-attached") / "server.log"
    proc = _start(vllm.server_command(spec, MODEL, "float32", port), log, vllm.server_env(spec))
    try:
        _wait(f"http://127.0.0.1:{port}/health", proc, log, timeout=600)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def test_a_vllm_attached_as_openai_is_named_and_timed_by_its_histograms(vllm_url, tmp_path):
    runtime = {"name": "vllm-url", "kind": "openai", "base_url": vllm_url + "/v1", "extra_body": {"ignore_eos": True}}
    path = write_scenario(tmp_path, runtime, (16, 16), {**LOAD, "concurrency": [2], "requests": 4, "min_seconds": 2})
    raw = tmp_path / "raw"
    run_trial(TrialPlan(scenario=path, data_dir=str(raw)), progress=False)  # one trial: a one-cell sweep has no comparison to stop on
    run = store.read_table(raw, "run").row(0, named=True)
    assert run["status"] == "complete", run["error"]
    version = _get(vllm_url + "/version")["version"]
    assert run["engine"] == "vllm" and run["runtime_version"] == f"vLLM {version} behind an OpenAI-compatible URL"
    # the folder /v1/models names as its root, read here
    own = hf_traffic(vllm_env.converted_dir(MODEL, "float32"))
    assert (run["weight_bytes"], run["kv_bytes_per_token"]) == (own.weight_bytes, own.kv_bytes_per_token)
    assert own.weight_bytes > 0
    parts = decompose.trial_parts(speed.measured_requests(raw), raw).row(0, named=True)
    assert parts["engine"] == "vllm" and parts["timed_by"] == "server (trial histograms)"
    assert parts["prompt"] > 0 and parts["decode_rest"] > 0 and parts["server_queue"] >= 0
    from gaplab.machine import bandwidth

    bandwidth.record(raw, "test")  # what a sweep measures before its trials: the roofline's bound
    tables = page_tables(raw, tmp_path)  # the page shows them: vLLM's parts and its roofline
    assert "vLLM" in tables["tbl-sources"] and r"server \(trial histograms\)" in tables["tbl-parts"]  # Markdown-escaped
    assert "vllm-url" in tables["tbl-roofline"]
