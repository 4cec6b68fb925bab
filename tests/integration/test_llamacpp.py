"""Against a real llama-server on SmolLM2-135M (built and provisioned by `make test`)."""


import polars as pl
import pytest
from conftest import write_scenario

from gaplab.measure.trial import TrialPlan, run_trial
from gaplab.provision import llama_build
from gaplab.report import speed
from gaplab.runtimes.llamacpp import llama_server
from gaplab.spec.scenario import RuntimeSpec, load_scenario
from gaplab.storage import store

pytestmark = pytest.mark.slow

OUTPUT_TOKENS = 24


@pytest.fixture(scope="module")
def two_levels(llama_ready, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama")
    path = write_scenario(tmp, {"name": "batch4", "kind": "llamacpp", "parallel": 4, "threads": 1}, (16, OUTPUT_TOKENS),
                          {"concurrency": [1, 2], "requests": 6, "min_seconds": 0, "warmup": 1, "max_seconds": 60})
    for cell in load_scenario(path).cells():
        assert run_trial(TrialPlan(scenario=path, cell_id=cell.cell_id, data_dir=str(tmp / "raw")), progress=False)["errors"] == 0
    return tmp / "raw"


def test_token_counts_equal_the_servers(two_levels):
    req = store.read_table(two_levels, "requests")
    assert req.height == 2 * 7 and req["warmup"].sum() == 2
    assert req["error"].null_count() == req.height
    assert (req["completion_tokens"] == req["server_predicted_n"]).all()
    assert (req["completion_tokens"] == OUTPUT_TOKENS).all()  # ignore_eos forced the length
    assert (req["n_token_chunks"] == req["completion_tokens"]).all()
    chunks = store.read_table(two_levels, "chunks")
    assert chunks.filter(pl.col("chunk_index") == 0)["kind"].unique().to_list() == ["role"]


def test_decode_rate_agrees_with_the_servers_own(two_levels):
    summary = speed.cell_summary(speed.measured_requests(two_levels))
    assert sorted(summary["concurrency"].to_list()) == [1, 2]
    for row in summary.iter_rows(named=True):
        ratio = row["per_user_tok_s"] / row["server_decode_tok_s"]
        print(f"\nc{row['concurrency']}: client {row['per_user_tok_s']:.1f} tok/s, "
              f"server {row['server_decode_tok_s']:.1f} tok/s ({ratio:.3f})")
        # near 1 on a quiet machine; with a core kept busy the client reads its chunks late (a CI run
        # read 0.898 at 2 users). A decode span off by 200 ms reads below 0.8 at either level here.
        assert 0.85 <= ratio <= 1.15


def test_run_metadata_says_what_ran(two_levels):
    run = store.read_table(two_levels, "run")
    assert set(run["status"]) == {"complete"}
    assert run["launch_command"].str.contains("-np 4 -c 4096 -t 1 --metrics").all()
    assert run["model_sha256"].str.len_chars().eq(64).all()
    assert run["runtime_version"].str.contains("llama-cpp-python 0.3.36").all()
    assert set(run["engine_version"]) == {llama_build.ENGINE}
    # the cold start, as typed columns: process start, then healthy, then the probe's first token
    assert run.select("server_started_ns", "server_healthy_ns", "server_first_token_ns").null_count().row(0) == (0, 0, 0)
    assert ((run["server_started_ns"] < run["server_healthy_ns"])
            & (run["server_healthy_ns"] < run["server_first_token_ns"])).all()
    # what a decode step reads, from the served GGUF file: SmolLM2-135M, 30 layers, 3 KV heads of 64
    from gaplab.provision.models import model_path

    quant = run["quant"][0]
    assert set(run["weight_bytes"]) == {model_path("smollm2-135m", quant).stat().st_size}
    assert set(run["kv_bytes_per_token"]) == {30 * 3 * (64 + 64) * 2}


def test_server_is_stopped_on_error(llama_ready):
    spec = RuntimeSpec(name="x", kind="llamacpp")
    with pytest.raises(ZeroDivisionError):
        with llama_server(spec, "smollm2-135m", "Q4_1") as server:
            pid = server.pid
            1 / 0
    with pytest.raises(ProcessLookupError):
        import os
        os.kill(pid, 0)



def test_the_runner_matching_build_serves_and_names_its_engine(llama_ready, tmp_path):
    """llama.cpp b10488 with the CPU flags of Ollama's runner (gaplab local setup --build b10488-avx2)."""
    if not llama_build.llama_built("b10488-avx2"):
        pytest.skip("the b10488-avx2 build is not built: run '.venv/bin/gaplab local setup --build b10488-avx2'")
    path = write_scenario(tmp_path, {"name": "runner", "kind": "llamacpp", "threads": 1, "build": "b10488-avx2"},
                          (16, 8), {"concurrency": [1], "requests": 2, "min_seconds": 0, "warmup": 1})
    assert run_trial(TrialPlan(scenario=path, data_dir=str(tmp_path / "raw")), progress=False)["errors"] == 0
    run = store.read_table(tmp_path / "raw", "run")
    assert run["engine_version"][0] == llama_build.BUILDS["b10488-avx2"].engine
    assert run["launch_command"][0].startswith(str(llama_build.tool_path("llama-server", "b10488-avx2")))
    assert (store.read_table(tmp_path / "raw", "requests")["completion_tokens"] == 8).all()
