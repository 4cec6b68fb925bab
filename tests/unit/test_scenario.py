import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from gaplab.spec.scenario import ScenarioError, load_scenario, parse_scenario

GOOD = {
    "name": "t",
    "runtimes": [{"name": "a", "kind": "llamacpp", "parallel": 8}, {"name": "b", "kind": "llamacpp"}],
    "models": [{"name": "m", "api": "chat", "quants": ["F16", "Q8_0"]}],
    "workloads": [{"name": "w", "prompt_tokens": 32, "output_tokens": 16}],
    "load": {"concurrency": [1, 8]},
}


def test_matrix_expands_runtime_restrictions_and_groups_servers():
    data = copy.deepcopy(GOOD)
    data["models"].append({"name": "m2", "api": "completions", "quants": ["Q4"]})
    data["runtimes"].append({"name": "v", "kind": "vllm", "models": ["m"], "quants": ["BF16"]})
    cells = parse_scenario(data).cells()
    # a and b serve both models with the models' quants; v serves m only, with its own quant
    assert len(cells) == 2 * (2 + 1) * 2 + 1 * 2
    assert {c.quant for c in cells if c.runtime.name == "v"} == {"BF16"}
    assert len({c.cell_key for c in cells}) == len(cells)
    keys = [c.server_key for c in cells]  # cells of one server are adjacent
    assert len([k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]) == len(set(keys)) == 7


def test_a_runtimes_quants_pick_each_models_own_where_the_model_lists_them():
    data = copy.deepcopy(GOOD)
    data["models"].append({"name": "m2", "api": "completions", "quants": ["F16", "Q4_K_M"]})
    data["runtimes"] = [{"name": "o", "kind": "ollama", "quants": ["Q8_0", "Q4_K_M"]},
                        {"name": "v", "kind": "vllm", "quants": ["BF16"]}]
    quants = {(c.runtime.name, c.model.name, c.quant) for c in parse_scenario(data).cells()}
    # Ollama on each model's own file; vLLM's dtype is no model's quant, so every model gets it
    assert quants == {("o", "m", "Q8_0"), ("o", "m2", "Q4_K_M"), ("v", "m", "BF16"), ("v", "m2", "BF16")}


def test_trials_and_precision_are_not_part_of_a_cells_identity():
    a = parse_scenario(GOOD).cells()[0]
    more = copy.deepcopy(GOOD)
    more["load"].update(trials=5, max_trials=9, precision=0.02, requests=100)
    assert parse_scenario(more).cells()[0].cell_key == a.cell_key


def test_every_shipped_scenario_is_valid():
    for path in (Path(__file__).resolve().parents[2] / "scenarios").glob("*.yaml"):
        assert load_scenario(path).cells(), path


def test_cell_key_changes_with_what_is_measured():
    a = parse_scenario(GOOD).cells()[0]
    changed = copy.deepcopy(GOOD)
    changed["runtimes"][0]["threads"] = 2
    b = parse_scenario(changed).cells()[0]
    assert a.cell_id == b.cell_id and a.cell_key != b.cell_key


def _error(mutate) -> str:
    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(data, "s.yaml")
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(runtims=[]), "s.yaml: runtims: unknown field"),
    (lambda d: d["runtimes"][0].update(kind="vllm2"),
     "runtimes.0.kind: got 'vllm2'; input should be one of llamacpp, ollama, openai, sglang, vllm"),
    (lambda d: d["runtimes"][0].update(parallel=0), "runtimes.0.parallel: got 0; input should be greater than or equal to 1"),
    (lambda d: d["load"].update(concurrency=["eight"]), "load.concurrency.0: got 'eight'"),
    (lambda d: d["load"].update(concurrency=[0]), "every concurrency level must be 1 or more"),
    (lambda d: d["load"].update(trials=0), "load.trials: got 0; input should be greater than or equal to 1"),
    (lambda d: d["load"].update(trials=4, max_trials=3), "load: max_trials: got 3; it must be at least trials (4)"),
    (lambda d: d["load"].update(precision=1.5), "load.precision: got 1.5; input should be less than 1"),
    (lambda d: d["load"].update(precision=-0.1), "load.precision: got -0.1"),
    (lambda d: d["load"].update(equivalence_margin=0), "load.equivalence_margin: got 0; input should be greater than 0"),
    (lambda d: d["load"].update(equivalence_margin=1.5), "load.equivalence_margin: got 1.5; input should be less than 1"),
    (lambda d: d["load"].update(max_cell_seconds=0), "load.max_cell_seconds: got 0"),
    (lambda d: d["load"].update(max_sweep_seconds=-5), "load.max_sweep_seconds: got -5"),
    (lambda d: d["load"].update(min_seconds=10, max_seconds=5), "max_seconds: got 5.0; it must be at least min_seconds"),
    (lambda d: d["load"].update(keep_servers="sometimes"), "load.keep_servers: got 'sometimes'"),
    (lambda d: d["models"][0].update(api="chatty"), "models.0.api: got 'chatty'; input should be 'chat' or 'completions'"),
    (lambda d: d["models"][0].update(quants=[]), "models.0.quants"),
    (lambda d: d["workloads"][0].pop("output_tokens"), "workloads.0.output_tokens: field required"),
    (lambda d: d["runtimes"].append({"name": "a", "kind": "llamacpp"}), "runtimes: names must be unique, 'a' appears twice"),
    (lambda d: d["runtimes"].append({"name": "c", "kind": "openai"}), "base_url is required when kind is 'openai'"),
    (lambda d: d["runtimes"][0].update(name="Has Space"), "runtimes.0.name: got 'Has Space'"),
    (lambda d: d["runtimes"][0].update(models=["nope"]), "runtimes.0.models: 'nope' is not one of the scenario's models (m)"),
    (lambda d: d["runtimes"][0].update(base_url="http://x/v1"), "base_url is only for kinds 'ollama' and 'openai'"),
    (lambda d: d["load"].update(grace_seconds=-1), "load.grace_seconds: got -1"),
    (lambda d: d["load"].update(stop_after_errors=0), "load.stop_after_errors: got 0"),
    (lambda d: d["load"].update(max_restarts=-1), "load.max_restarts: got -1"),
    (lambda d: d["runtimes"].append({"name": "o", "kind": "ollama", "prefix_cache": False}),
     "runtimes.2: prefix_cache: Ollama has no switch for its prompt cache"),
    (lambda d: d["runtimes"][0].update(build="b9999"), "runtimes.0.build: got 'b9999'; input should be one of native"),
    (lambda d: d["runtimes"].append({"name": "o", "kind": "ollama", "build": "b10488-avx2"}),
     "runtimes.2: build: a field of kind 'llamacpp', not of 'ollama'; remove it"),
    (lambda d: d["runtimes"].append({"name": "c", "kind": "openai", "base_url": "http://x/v1",
                                     "model_config": {"m": "/no/such/config.json"}}),
     "runtimes.2.model_config: m: /no/such/config.json does not exist here"),
    (lambda d: d["runtimes"].append({"name": "c", "kind": "openai", "base_url": "http://x/v1",
                                     "model_config": {"other": "/"}}),
     "runtimes.2.model_config: 'other' is not one of the scenario's models (m)"),
    (lambda d: d["runtimes"][0].update(model_config={"m": "/"}),
     "runtimes.0: model_config: only for servers gaplab attaches to"),
    (lambda d: d["runtimes"][0].update(device="gpu"), "runtimes.0.device: got 'gpu'; input should be 'cpu' or 'cuda'"),
    (lambda d: d["runtimes"].append({"name": "v", "kind": "vllm", "device": "cuda", "cuda_arch": 120}),
     "runtimes.2: cuda_arch: a field of kind 'llamacpp', not of 'vllm'; remove it"),
    (lambda d: d["runtimes"][0].update(device="cuda", build="b10488-avx2"),
     "runtimes.0: device: the CUDA build is of the native source, not 'b10488-avx2'"),
    (lambda d: d["runtimes"][0].update(cuda_arch=120), "runtimes.0: cuda_arch: only with device: cuda"),
    (lambda d: d["runtimes"][0].update(device="cuda", cuda_arch=52),
     "runtimes.0.cuda_arch: got 52; input should be greater than or equal to 75"),
])
def test_each_bad_field_names_itself(mutate, expected):
    assert expected.lower() in _error(mutate).lower()


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nruntimes: [\n  - oops: : :\n")
    with pytest.raises(ScenarioError, match=r"bad.yaml: line \d+ is not valid YAML"):
        load_scenario(p)


def test_cli_prints_one_line_and_no_traceback(tmp_path, gaplab_cli):
    data = copy.deepcopy(GOOD)
    data["load"]["concurrency"] = "many"
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    res = subprocess.run([*gaplab_cli, "sweep", str(p)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert "Traceback" not in res.stderr and "load.concurrency" in res.stderr


def test_runtime_kinds_come_from_the_adapter_modules():
    """Each kind is one module's KIND; the scenario's kind field, started_here and launch
    flags all read it, so a runtime added as a module is known everywhere at once."""
    from gaplab import runtimes
    found = runtimes.kinds()
    for name, kind in found.items():
        module = __import__(kind.open.__module__, fromlist=["KIND"])
        assert module.KIND is kind and kind.name == name
    assert {n for n, k in found.items() if k.starts} == {"llamacpp", "vllm", "ollama", "sglang"}
    assert {n for n, k in found.items() if k.attaches} == {"openai", "ollama", "sglang"}
    # a kind that does both is started without a base_url and attached with one
    assert found["ollama"].started_here(None) and not found["ollama"].started_here("http://box:11434")
    assert found["llamacpp"].started_here(None) and not found["openai"].started_here("http://box:8000/v1")
    data = copy.deepcopy(GOOD)
    data["runtimes"] += [{"name": "o1", "kind": "ollama", "parallel": 4},
                         {"name": "o2", "kind": "ollama", "base_url": "http://box:11434"}]
    started, attached = parse_scenario(data).runtimes[-2:]
    assert started.started_here and started.launch_flags() == {"parallel": 4, "threads": 1, "ctx_size": 4096}
    assert not attached.started_here and attached.launch_flags() == {"base_url": "http://box:11434"}
    # a llama.cpp build other than the native one is part of the identity; the native one is not
    # named, so cells measured before there were builds keep their keys
    data["runtimes"].append({"name": "r", "kind": "llamacpp", "build": "b10488-avx2"})
    native, runner = parse_scenario(data).runtimes[1], parse_scenario(data).runtimes[-1]
    assert "build" not in native.launch_flags() and runner.launch_flags()["build"] == "b10488-avx2"
    spec = parse_scenario(GOOD).runtimes[0]
    assert spec.launch_flags() == found["llamacpp"].identity_flags(spec)
    assert not found["vllm"].quick and found["llamacpp"].quick  # quality skips vLLM unless asked


LOGNORMAL = {"dist": "lognormal", "mean": 180, "sd": 80}


def _workload(**fields) -> dict:
    return {"name": "w", "kind": "distribution", "prompt": dict(LOGNORMAL), "output": {"dist": "fixed", "value": 8},
            **fields}


def test_workload_kinds_parse_and_old_files_still_do():
    data = copy.deepcopy(GOOD)
    data["workloads"] += [
        _workload(name="chat", seed=4),
        {"name": "sp", "kind": "shared-prefix", "prefix_tokens": 512, "suffix_tokens": 32, "output_tokens": 8},
        {"name": "mix", "kind": "long-prompt-mix", "short_prompt_tokens": 32, "long_prompt_tokens": 4096,
         "long_every": 4, "output_tokens": 16},
        {"name": "mt", "kind": "multi-turn", "turns": 4, "first_prompt_tokens": 200, "turn_prompt_tokens": 30,
         "output_tokens": 40}]
    w = {x.name: x for x in parse_scenario(data).workloads}
    assert [w[n].kind for n in ("w", "chat", "sp", "mix", "mt")] == [
        "fixed", "distribution", "shared-prefix", "long-prompt-mix", "multi-turn"]
    assert (w["w"].prompt_tokens, w["w"].seed, w["chat"].seed, w["sp"].prefixes) == (32, None, 4, 1)
    assert w["chat"].prompt.mean == 180 and w["mix"].long_every == 4 and w["mt"].turns == 4


@pytest.mark.parametrize("workload, expected", [
    (_workload(kind="fractal"), "workloads.0.kind: got 'fractal'; input should be one of distribution, file, "
                                "fixed, long-prompt-mix, multi-turn, shared-prefix"),
    (_workload(prompt={**LOGNORMAL, "sd": -1}),
     "workloads.0.prompt.sd: got -1; input should be greater than or equal to 0"),
    (_workload(prompt={**LOGNORMAL, "sd": 0}), "workloads.0.prompt: sd: got 0; a lognormal needs sd > 0"),
    (_workload(prompt={**LOGNORMAL, "mean": 0}), "workloads.0.prompt.mean: got 0; input should be greater than 0"),
    (_workload(prompt={"dist": "uniform", "min": 9, "max": 3}),
     "workloads.0.prompt: min: got 9; it must be at most max (3)"),
    (_workload(prompt={"dist": "uniform", "min": 0, "max": 3}),
     "workloads.0.prompt.min: got 0; input should be greater"),
    (_workload(prompt={**LOGNORMAL, "max": 100}), "workloads.0.prompt: mean: got 180; it must be within min and max"),
    (_workload(prompt={"dist": "normal", "mean": 9}), "workloads.0.prompt: sd: dist 'normal' needs mean and sd"),
    (_workload(prompt={"dist": "uniform", "max": 9}), "workloads.0.prompt: min: dist 'uniform' needs max and min"),
    (_workload(output={"dist": "fixed", "value": 8, "mean": 8}), "workloads.0.output: mean: not a parameter of dist "
                                                                 "'fixed', which takes value"),
    (_workload(prompt={"dist": "gamma", "mean": 9}), "workloads.0.prompt.dist: got 'gamma'"),
    (_workload(prompt={**LOGNORMAL, "median": 9}), "workloads.0.prompt.median: unknown field"),
    (_workload(output=None), "workloads.0.output: got None"),
    ({"name": "w", "prompt_tokens": 200000, "output_tokens": 8}, "workloads.0.prompt_tokens: got 200000; input should "
                                                                  "be less than or equal to 131072"),
    ({"name": "w", "kind": "shared-prefix", "prefix_tokens": 8, "suffix_tokens": 8, "output_tokens": 8,
      "prefixes": 0}, "workloads.0.prefixes: got 0"),
    ({"name": "w", "kind": "shared-prefix", "prefix_tokens": 131000, "suffix_tokens": 100, "output_tokens": 8},
     "workloads.0: prefix_tokens + suffix_tokens is 131100 tokens, more than 131072"),
    ({"name": "w", "kind": "long-prompt-mix", "short_prompt_tokens": 8, "long_prompt_tokens": 800, "long_every": 1,
      "output_tokens": 8}, "workloads.0.long_every: got 1; input should be greater than or equal to 2"),
    ({"name": "w", "kind": "long-prompt-mix", "short_prompt_tokens": 800, "long_prompt_tokens": 80, "long_every": 2,
      "output_tokens": 8}, "workloads.0: long_prompt_tokens: got 80; it must be more than short_prompt_tokens (800)"),
    ({"name": "w", "kind": "multi-turn", "turns": 1, "first_prompt_tokens": 8, "turn_prompt_tokens": 8,
      "output_tokens": 8}, "workloads.0.turns: got 1; input should be greater than or equal to 2"),
    ({"name": "w", "kind": "multi-turn", "turns": 200, "first_prompt_tokens": 1000, "turn_prompt_tokens": 500,
      "output_tokens": 500}, "workloads.0: turns: the last turn with its answer is 200500 tokens, more than 131072"),
    ({"name": "w", "kind": "multi-turn", "turns": 3, "first_prompt_tokens": 8, "turn_prompt_tokens": 8},
     "workloads.0.output_tokens: field required"),
    ({"name": "w", "kind": "file"}, "workloads.0.path: field required"),
    ({"name": "w", "kind": "fixed", "prompt_tokens": 8, "output_tokens": 8, "turns": 2}, "workloads.0.turns: unknown"),
])
def test_each_bad_workload_field_names_itself(workload, expected):
    msg = _error(lambda d: d.update(workloads=[workload]))
    assert msg.lower().startswith(f"s.yaml: {expected}".lower()), msg


def test_load_processes_defaults_to_one_and_names_itself_when_bad():
    load = parse_scenario(GOOD).load
    assert load.processes == 1  # one process: the client as it always ran
    more = copy.deepcopy(GOOD)
    more["load"]["processes"] = 2
    assert parse_scenario(more).load.processes == 2
    assert parse_scenario(more).cells()[0].cell_key == parse_scenario(GOOD).cells()[0].cell_key
    for bad, expected in ((0, "greater than or equal to 1"), ("two", "valid integer")):
        msg = _error(lambda d: d["load"].update(processes=bad))
        assert msg.startswith(f"s.yaml: load.processes: got {bad!r}") and expected in msg, msg


OLLAMA = {"name": "o", "kind": "ollama", "base_url": "http://127.0.0.1:11434"}
OPENAI = {"name": "o", "kind": "openai", "base_url": "http://127.0.0.1:8000/v1"}


@pytest.mark.parametrize("runtime, extra, field", [
    (OLLAMA, {"options": {"num_thread": 1, "num_predict": 5}}, "options.num_predict"),
    (OLLAMA, {"stream": False}, "stream"),
    ({"name": "l", "kind": "llamacpp"}, {"ignore_eos": False}, "ignore_eos"),
    ({"name": "l", "kind": "llamacpp"}, {"max_tokens": 8}, "max_tokens"),
    ({"name": "v", "kind": "vllm"}, {"max_completion_tokens": 8}, "max_completion_tokens"),
    (OPENAI, {"stream_options": {"include_usage": False}}, "stream_options"),
])
def test_extra_body_may_not_undo_the_forced_length_or_the_stream(runtime, extra, field):
    msg = _error(lambda d: d.update(runtimes=[{**runtime, "extra_body": extra}]))
    assert f"runtimes.0.extra_body: {field} is set by gaplab for kind '{runtime['kind']}'" in msg
    assert "output_tokens" in msg


@pytest.mark.parametrize("runtime, extra", [
    (OLLAMA, {"options": {"num_thread": 1, "num_ctx": 2048}, "keep_alive": "1m"}),
    (OPENAI, {"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}}),  # attached: its to set
    ({"name": "l", "kind": "llamacpp"}, {"min_tokens": 4, "options": {"num_predict": 3}}),  # not ollama's field here
])
def test_extra_body_takes_every_other_field(runtime, extra):
    sc = parse_scenario({**copy.deepcopy(GOOD), "runtimes": [{**runtime, "extra_body": extra}]})
    assert sc.runtimes[0].extra_body == extra


def test_the_runtimes_page_lists_the_fields_each_kind_reserves():
    """guide/runtimes.qmd's table says which request fields extra_body may not set: as the code does."""
    import re

    from gaplab import runtimes
    page = (Path(__file__).resolve().parents[2] / "guide" / "runtimes.qmd").read_text()
    for name, kind in runtimes.kinds().items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        listed = re.findall(r"`([a-z_.]+)`", row.split(" | ")[3])
        assert sorted(listed) == sorted(kind.reserved), (name, listed)


def test_model_config_paths_are_read_from_the_scenarios_folder(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "config.json").write_text("{}")
    data = copy.deepcopy(GOOD)
    data["runtimes"].append({"name": "c", "kind": "openai", "base_url": "http://x/v1",
                             "model_config": {"m": "models/config.json"}})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    described = load_scenario(tmp_path / "s.yaml")
    assert described.runtimes[2].model_files == {"m": str(tmp_path / "models" / "config.json")}
    del data["runtimes"][2]["model_config"]  # which file describes the model is not part of a cell's identity
    assert [c.cell_key for c in parse_scenario(data).cells()] == [c.cell_key for c in described.cells()]
