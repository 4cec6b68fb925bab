"""SGLang: the server gaplab would start on a GPU (its command line, refused here without one), its
own scenario fields, and a server attached by URL named as SGLang by what it answers."""

import sys
from pathlib import Path

import pytest

from gaplab.machine.hardware import hardware
from gaplab.provision import sglang_env, vllm_env
from gaplab.runtimes import sglang
from gaplab.spec.scenario import ScenarioError, parse_scenario

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from static_server import serving  # noqa: E402
from test_identify import SGLANG  # noqa: E402

LOAD = {"concurrency": [1], "requests": 2}


def scenario(runtime: dict):
    return parse_scenario({"name": "s", "runtimes": [{"name": "sg", "kind": "sglang", **runtime}],
                           "models": [{"name": "smollm2-135m", "api": "chat", "quants": ["BF16"]}],
                           "workloads": [{"name": "w", "prompt_tokens": 8, "output_tokens": 8}], "load": LOAD})


def test_the_launch_command_is_sglangs_own_server_with_its_metrics_on():
    rt = scenario({"parallel": 16, "ctx_size": 8192, "mem_fraction_static": 0.8, "prefix_cache": False}).runtimes[0]
    cmd = sglang.server_command(rt, "smollm2-135m", "bfloat16", 1234)
    assert cmd[:3] == [str(sglang_env.venv_python()), "-m", "sglang.launch_server"]
    assert cmd[cmd.index("--model-path") + 1] == str(vllm_env.converted_dir("smollm2-135m", "float32"))
    assert cmd[cmd.index("--max-running-requests") + 1] == "16" and cmd[cmd.index("--context-length") + 1] == "8192"
    assert "--enable-metrics" in cmd and "--disable-radix-cache" in cmd and cmd[cmd.index("--mem-fraction-static") + 1] == "0.8"
    assert sglang_env.install_command()[-3:] == [f"sglang=={sglang_env.SGLANG}", *sglang_env.EXTRA]


def test_its_fields_are_its_own():
    with pytest.raises(ScenarioError, match=r"runtimes.0.mem_fraction_static: .*less than 1"):
        scenario({"mem_fraction_static": 1.5})
    with pytest.raises(ScenarioError, match=r"enforce_eager: a field of kind 'vllm', not of 'sglang'"):
        scenario({"enforce_eager": True})


def test_without_a_gpu_starting_it_is_refused_in_one_line():
    if hardware()["gpus"]:
        pytest.skip("this machine has a GPU")
    rt = scenario({}).runtimes[0]
    with pytest.raises(RuntimeError, match=r"^runtime sg: SGLang runs on a GPU, and no NVIDIA GPU was found"):
        with sglang.sglang_server(rt, "smollm2-135m", "BF16"):
            pass


def test_a_server_attached_by_url_is_named_sglang_by_what_it_answers():
    routes = {**SGLANG, "/v1/models": {"object": "list", "data": [{"id": "Qwen/Qwen3-8B", "object": "model"}]}}
    with serving(routes) as root:
        sc = parse_scenario({"name": "s", "runtimes": [{"name": "sg", "kind": "sglang", "base_url": root + "/v1"}],
                             "models": [{"name": "qwen3-8b", "served_name": "Qwen/Qwen3-8B", "api": "chat",
                                         "quants": ["BF16"]}],
                             "workloads": [{"name": "w", "prompt_tokens": 8, "output_tokens": 8}], "load": LOAD})
        cell = sc.cells()[0]
        assert cell.runtime.launch_flags() == {"base_url": root + "/v1"}
        with sglang.KIND.open(cell, None) as server:
            assert server.engine == "sglang" and "SGLang 0.5.4" in server.runtime_version
            assert server.metrics_url == root + "/metrics"
