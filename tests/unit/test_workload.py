import copy
import json
import random
import statistics

import orjson
import pytest

from gaplab.measure.client import StreamClient
from gaplab.measure.prompts import WORDS, make_prompt, request
from gaplab.spec.scenario import ScenarioError, load_scenario, parse_scenario
from gaplab.spec.workloads import LengthSpec

BASE = {"name": "t", "runtimes": [{"name": "a", "kind": "llamacpp"}], "models": [{"name": "m", "quants": ["F16"]}],
        "load": {"concurrency": [1]}}
KINDS = {
    "fixed": {"prompt_tokens": 32, "output_tokens": 16},
    "distribution": {"prompt": {"dist": "lognormal", "mean": 180, "sd": 80},
                     "output": {"dist": "lognormal", "mean": 220, "sd": 100}},
    "shared-prefix": {"prefix_tokens": 40, "suffix_tokens": 8, "output_tokens": 4, "prefixes": 2},
    "long-prompt-mix": {"short_prompt_tokens": 16, "long_prompt_tokens": 300, "long_every": 3, "output_tokens": 4},
    "multi-turn": {"turns": 3, "first_prompt_tokens": 20, "turn_prompt_tokens": 6, "output_tokens": 5},
}


def spec(kind: str, **fields):
    data = copy.deepcopy(BASE)
    data["workloads"] = [{"name": "w", "kind": kind, **KINDS.get(kind, {}), **fields}]
    return parse_scenario(data).workloads[0]


def words(text: str) -> list[str]:
    return text.split(" ")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_parses_and_its_requests_are_deterministic(kind):
    s = spec(kind)
    assert s.kind == kind and set(KINDS[kind]) | {"name", "seed", "kind", "concurrency", "rates"} == set(type(s).model_fields)
    reqs = [request(s, 7, "cell:1", i, user=i % 2, seq=i // 2) for i in range(6)]
    assert reqs == [request(s, 7, "cell:1", i, user=i % 2, seq=i // 2) for i in range(6)]
    assert reqs != [request(s, 7, "cell:2", i, user=i % 2, seq=i // 2) for i in range(6)]  # salted per trial
    assert all(r.output_tokens >= 1 and r.prompt_tokens >= 1 for r in reqs)


def test_fixed_requests_are_the_stored_prompts_and_keep_the_cell_key():
    s = spec("fixed")
    assert request(s, 3, "k:1", 5) == request(s, 3, "k:1", 5)
    assert request(s, 3, "k:1", 5).prompt == make_prompt(s, 3, "k:1", 5)
    assert len(words(make_prompt(s, 3, "k:1", 5))) == 32
    # an unset seed stays out of the identity, so cells measured before seed existed keep their keys
    data = copy.deepcopy(BASE)
    data["workloads"] = [{"name": "w", "prompt_tokens": 32, "output_tokens": 16}]
    cell = parse_scenario(data).cells()[0]
    assert cell.identity()["workload"] == {"name": "w", "kind": "fixed", "prompt_tokens": 32, "output_tokens": 16}
    data["workloads"][0]["seed"] = 9
    assert parse_scenario(data).cells()[0].cell_key != cell.cell_key


def test_a_workload_seed_replaces_the_scenarios():
    s, own = spec("fixed"), spec("fixed", seed=11)
    assert request(own, 0, "k", 0) == request(own, 5, "k", 0) == request(s, 11, "k", 0)
    assert request(s, 0, "k", 0) != request(s, 5, "k", 0)


def test_shared_prefix_requests_share_exactly_the_prefix():
    s = spec("shared-prefix", prefixes=1)
    reqs = [words(request(s, 0, "k:1", i).prompt) for i in range(5)]
    assert all(len(r) == 48 for r in reqs)
    assert all(r[:40] == reqs[0][:40] for r in reqs)
    suffixes = {tuple(r[40:]) for r in reqs}
    assert len(suffixes) == 5
    assert words(request(s, 0, "k:2", 0).prompt)[:40] != reqs[0][:40]  # another trial, another prefix
    two = spec("shared-prefix")  # prefixes: 2, request i uses prefix i % 2
    p = [words(request(two, 0, "k:1", i).prompt)[:40] for i in range(4)]
    assert p[0] == p[2] and p[1] == p[3] and p[0] != p[1]
    assert request(two, 0, "k:1", 0).tag == "shared"


def test_long_prompt_mix_puts_a_long_prompt_every_long_every():
    s = spec("long-prompt-mix")
    reqs = [request(s, 0, "k", i) for i in range(7)]
    assert [r.tag for r in reqs] == ["long", "short", "short", "long", "short", "short", "long"]
    assert [len(words(r.prompt)) for r in reqs] == [300, 16, 16, 300, 16, 16, 300]
    assert [r.prompt_tokens for r in reqs] == [300, 16, 16, 300, 16, 16, 300]


def test_multi_turn_resends_the_conversation_so_far():
    s = spec("multi-turn")
    turns = [request(s, 0, "k", 0, user=1, seq=t) for t in range(3)]
    assert [r.tag for r in turns] == ["turn-1", "turn-2", "turn-3"]
    for before, after in zip(turns, turns[1:]):
        assert after.prompt[:len(before.prompt)] == before.prompt
        assert [m["role"] for m in after.prompt[len(before.prompt):]] == ["assistant", "user"]
    last = turns[-1].prompt
    assert [len(words(m["content"])) for m in last] == [20, 5, 6, 5, 6]
    assert turns[-1].prompt_tokens == 20 + 2 * (6 + 5)
    # seq 3 starts the user's second conversation; another user has conversations of their own
    assert request(s, 0, "k", 0, user=1, seq=3).prompt[0] != last[0]
    assert request(s, 0, "k", 0, user=2, seq=0).prompt[0] != last[0]


@pytest.mark.parametrize("kwargs, mean, sd", [
    ({"dist": "lognormal", "mean": 180, "sd": 80}, 180, 80),
    ({"dist": "lognormal", "mean": 220, "sd": 100}, 220, 100),
    ({"dist": "normal", "mean": 100, "sd": 30}, 100, 30),
    ({"dist": "uniform", "min": 10, "max": 50}, 30, 40 / 12 ** 0.5),
])
def test_drawn_lengths_have_the_stated_mean_and_sd(kwargs, mean, sd):
    length = LengthSpec(**kwargs)
    rng = random.Random(1)
    xs = [length.draw(rng) for _ in range(2000)]
    assert all(length.min <= x <= length.max for x in xs) and all(isinstance(x, int) for x in xs)
    # 4% is about 4 standard errors; a lognormal that took mean as the log's mean, or left out
    # the -sigma^2/2 correction (a mean 9% high here), is outside it
    assert statistics.mean(xs) == pytest.approx(mean, rel=0.04)
    assert statistics.stdev(xs) == pytest.approx(sd, rel=0.15)


def test_draws_are_clipped_to_min_and_max():
    length = LengthSpec(dist="normal", mean=50, sd=100, min=20, max=60)
    xs = [length.draw(random.Random(i)) for i in range(500)]
    assert min(xs) == 20 and max(xs) == 60
    assert LengthSpec(dist="fixed", value=9).draw(random.Random(0)) == 9


def test_distribution_lengths_are_the_same_in_every_trial_and_the_words_are_not():
    s = spec("distribution")
    a = [request(s, 0, "cell-a:1", i) for i in range(20)]
    b = [request(s, 0, "cell-b:2", i) for i in range(20)]
    assert [(r.prompt_tokens, r.output_tokens) for r in a] == [(r.prompt_tokens, r.output_tokens) for r in b]
    assert len({r.prompt_tokens for r in a}) > 10  # drawn, not one length
    assert all(len(words(r.prompt)) == r.prompt_tokens and r.tag == "drawn" for r in a)
    assert a[0].prompt != b[0].prompt


def _scenario_with_file(tmp_path, text: str | bytes, **fields):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(text.encode() if isinstance(text, str) else text)
    data = copy.deepcopy(BASE)
    data["workloads"] = [{"name": "f", "kind": "file", "path": "prompts.jsonl", **fields}]
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def test_file_prompts_are_read_from_the_scenario_folder_and_cycled(tmp_path, monkeypatch):
    lines = [{"prompt": "one two"}, {"messages": [{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": "hi"}], "output_tokens": 7}]
    path = _scenario_with_file(tmp_path, "\n".join(json.dumps(x) for x in lines) + "\n\n")
    monkeypatch.chdir("/")  # the path is the scenario folder's, not the current directory's
    s = load_scenario(path).workloads[0]
    reqs = [request(s, 0, "k", i) for i in range(3)]
    assert reqs[0].prompt == "one two" and reqs[0].output_tokens == 128 and reqs[0].prompt_tokens is None
    assert reqs[1].prompt == lines[1]["messages"] and reqs[1].output_tokens == 7
    assert reqs[2] == reqs[0] and reqs[0].tag == "file"
    key = load_scenario(path).cells()[0].cell_key
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "changed"}) + "\n")
    assert load_scenario(path).cells()[0].cell_key != key  # a changed file makes new cells


@pytest.mark.parametrize("text, expected", [
    ('{"prompt": "a"}\n{"prompt": "b"\n', "prompts.jsonl:2: not JSON"),
    ('\n\n["a"]\n', "prompts.jsonl:3: a JSON list, not an object"),
    ('{"output_tokens": 4}\n', "prompts.jsonl:1: needs prompt or messages"),
    ('{"prompt": "a", "messages": []}\n', "prompts.jsonl:1: needs prompt or messages"),
    ('{"prompt": 5}\n', "prompts.jsonl:1: prompt: got 5"),
    ('{"messages": []}\n', "prompts.jsonl:1: messages: must be a non-empty list"),
    ('{"messages": [{"role": "robot", "content": "x"}]}\n', "prompts.jsonl:1: messages: must be"),
    ('{"messages": [{"role": "user"}]}\n', "prompts.jsonl:1: messages: must be"),
    ('{"prompt": "a", "output_tokens": 0}\n', "prompts.jsonl:1: output_tokens: got 0"),
    ('{"prompt": "a", "output_tokens": "8"}\n', "prompts.jsonl:1: output_tokens: got '8'"),
    ('{"prompt": "a", "max_tokens": 8}\n', "prompts.jsonl:1: unknown field 'max_tokens'"),
    ("\n  \n", "prompts.jsonl: no prompts in it"),
    (b"\xff\xfe", "prompts.jsonl: not UTF-8 text"),
])
def test_a_bad_prompt_file_is_refused_in_one_line_naming_the_line(tmp_path, text, expected):
    with pytest.raises(ScenarioError) as exc:
        load_scenario(_scenario_with_file(tmp_path, text))
    msg = str(exc.value)
    assert "\n" not in msg and f"s.yaml: workloads.0: {tmp_path}/{expected}" in msg


def test_a_missing_prompt_file_or_a_stale_sha256_is_refused(tmp_path):
    path = _scenario_with_file(tmp_path, '{"prompt": "a"}\n')
    (tmp_path / "prompts.jsonl").unlink()
    with pytest.raises(ScenarioError, match=r"workloads\.0: .*prompts\.jsonl: no such file"):
        load_scenario(path)
    path = _scenario_with_file(tmp_path, '{"prompt": "a"}\n', sha256="0" * 64)
    with pytest.raises(ScenarioError, match=r"workloads\.0: sha256: .*prompts\.jsonl has sha256 [0-9a-f]{64}, not"):
        load_scenario(path)


@pytest.mark.parametrize("api, protocol, key, expected", [
    ("chat", "openai", "messages", [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]),
    ("completions", "openai", "prompt", "a b\nc"),
    ("completions", "ollama", "prompt", "a b\nc"),
])
def test_a_request_body_takes_chat_messages(api, protocol, key, expected):
    client = StreamClient("http://127.0.0.1:9/v1", api, protocol=protocol)
    messages = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]
    assert orjson.loads(client.body(messages, 4, "m"))[key] == expected
    text = orjson.loads(client.body("a b", 4, "m"))[key]
    assert text == ([{"role": "user", "content": "a b"}] if api == "chat" else "a b")


def test_words_are_the_vocabulary():
    s = spec("long-prompt-mix")
    assert set(words(request(s, 0, "k", 0).prompt)) <= set(WORDS)


def test_workload_specs_are_as_strict_as_the_rest_of_a_scenario():
    from gaplab.spec import load, scenario, workloads  # one base for all (workload_spec: no import cycle)

    assert workloads.Strict.model_config == {"extra": "forbid", "frozen": True}
    assert issubclass(scenario.RuntimeSpec, workloads.Strict) and issubclass(load.LoadSpec, workloads.Strict)
