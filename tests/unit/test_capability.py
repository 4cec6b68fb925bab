"""The capability probes' judgements, on responses written as each runtime's API answers (the
probes against real servers are in tests/integration), and the report's matrix."""

import json

import polars as pl
import pytest

from gaplab.capability import judges as cap
from gaplab.capability import probes
from gaplab.measure.records import CONTENT, USAGE, RequestRecord
from gaplab.report import capability as page


def answer(message: dict | None = None, **extra) -> dict:
    return {"choices": [{"index": 0, "message": message or {"role": "assistant", "content": ""}}], **extra}


def call(name: str, arguments: str) -> dict:
    return {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": name,
                                                                                  "arguments": arguments}}]}


def test_a_tool_call_passes_only_with_the_named_function_and_json_arguments():
    assert cap.judge_tool_call(200, answer(call("get_weather", '{"city": "Paris"}'))).verdict == cap.PASS
    assert cap.judge_tool_call(200, answer(call("get_weather", "{city: Paris"))).verdict == cap.FAIL
    assert cap.judge_tool_call(200, answer(call("other", '{"city": "Paris"}'))).verdict == cap.FAIL
    text = cap.judge_tool_call(200, answer({"role": "assistant", "content": "It is sunny."}),
                               {"chat_template_caps": "{'supports_tools': False}"})
    assert text.verdict == cap.FAIL and "does not support tools" in text.evidence


def test_a_refusal_is_not_offered_and_any_other_error_a_failure():
    refused = cap.judge_tool_call(400, {"error": {"message": "requires --tool-call-parser"}})
    assert refused.verdict == cap.NOT_OFFERED and refused.http_status == 400 and "tool-call-parser" in refused.evidence
    assert cap.judge_json_schema(500, "internal error").verdict == cap.FAIL
    assert cap.judge_logprobs(None, "ConnectError: refused").verdict == cap.FAIL
    for status in (401, 404, 429):  # a key, a path or a rate limit: not what the server offers
        assert cap.judge_logprobs(status, {"error": "x"}).verdict == cap.FAIL
    assert cap.judge_usage(stream(0, error="HTTP 422: stream_options not allowed", status=422)).verdict == cap.NOT_OFFERED
    assert cap.judge_usage(stream(0, error="HTTP 401: no key", status=401)).verdict == cap.FAIL


def test_an_answer_cut_at_max_tokens_says_so():
    cut = answer({"role": "assistant", "content": '{"country": "Spain", "capi'})
    cut["choices"][0]["finish_reason"] = "length"
    judged = cap.judge_json_schema(200, cut)
    assert judged.verdict == cap.FAIL and "cut at max_tokens" in judged.evidence


@pytest.mark.parametrize("content, verdict", [
    ('{"country": "Spain", "capital": "Madrid"}', cap.PASS),
    ('{"country": "Italy", "capital": "Rome"}', cap.FAIL),  # outside the enum
    ('{"country": "Spain", "capital": "Madrid", "extra": "x"}', cap.FAIL),  # additionalProperties false
    ('{"country": "Spain", "capital": "' + "M" * 21 + '"}', cap.FAIL),  # past maxLength
    ('{"country": "Spain", "capital": "Mad', cap.FAIL),  # cut off: not JSON
])
def test_json_schema_output_is_checked_against_the_schema(content, verdict):
    assert cap.judge_json_schema(200, answer({"role": "assistant", "content": content})).verdict == verdict


def test_logprobs_need_a_negative_logprob_and_alternatives_per_token():
    good = answer(logprobs=None)
    good["choices"][0]["logprobs"] = {"content": [{"token": "Hi", "logprob": -0.2,
                                                   "top_logprobs": [{"token": "Hi", "logprob": -0.2}]}]}
    assert cap.judge_logprobs(200, good).verdict == cap.PASS
    bad = json.loads(json.dumps(good))
    bad["choices"][0]["logprobs"]["content"][0]["logprob"] = 0.5
    assert cap.judge_logprobs(200, bad).verdict == cap.FAIL
    assert cap.judge_logprobs(200, answer()).verdict == cap.FAIL


def test_one_model_and_no_adapters_is_not_offered_as_launched():
    one = {"data": [{"id": "m"}]}
    assert cap.judge_models(200, one, None).verdict == cap.NOT_OFFERED
    assert cap.judge_models(200, one, [{"id": 0, "path": "a.gguf"}]).verdict == cap.PASS
    assert cap.judge_models(200, {"data": [{"id": "m"}, {"id": "lora-a"}]}, None).verdict == cap.PASS


def stream(tokens: int, usage: bool = True, t0: int = 0, step: int = 10, error: str | None = None,
           status: int = 200) -> RequestRecord:
    rec = RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0, sent_ns=t0, error=error, http_status=status)
    rec.chunks = [(t0 + (k + 1) * step, CONTENT, 3) for k in range(tokens)] + ([(t0 + 999, USAGE, 0)] if usage else [])
    if tokens:
        rec.first_token_ns, rec.last_token_ns = rec.chunks[0][0], rec.chunks[tokens - 1][0]
    if usage:
        rec.prompt_tokens, rec.completion_tokens = 9, tokens
    return rec


def test_streamed_usage_and_forced_length():
    assert cap.judge_usage(stream(5)).verdict == cap.PASS
    assert cap.judge_usage(stream(5, usage=False)).verdict == cap.FAIL
    n = cap.FORCED_TOKENS
    assert cap.judge_forced_length(stream(n, usage=False), stream(3)).verdict == cap.PASS  # counted chunks
    assert cap.judge_forced_length(stream(3), stream(3)).verdict == cap.FAIL  # the option did nothing
    rambled = cap.judge_forced_length(stream(n), stream(n))  # the free answer ran to the length too
    assert rambled.verdict == cap.UNDECIDED and "does not show" in rambled.evidence
    for forced in (stream(3), stream(n)):  # no option to ignore the end of text: whatever the length
        judged = cap.judge_forced_length(forced, None)
        assert judged.verdict == cap.NOT_OFFERED and judged.value == forced.completion_tokens


def test_streams_served_one_after_another_do_not_overlap():
    serial = [stream(4, t0=k * 100) for k in range(4)]  # each ends (t0+40) before the next starts
    together = [stream(4, t0=k) for k in range(4)]
    assert cap.judge_overlap(serial).verdict == cap.FAIL and cap.judge_overlap(serial).value == 1
    assert cap.judge_overlap(together).value == 4
    assert cap.most_at_once([(0, 10), (10, 20)]) == 1  # one ends as the next starts
    assert cap.most_at_once([(0, 10), (5, 20), (6, 7)]) == 3
    assert cap.judge_overlap([stream(4), stream(0, error="HTTP 503: busy")]).verdict == cap.FAIL


def timed(seconds: float, cached: int | None = None, llama: bool = False):
    body = answer(usage={"prompt_tokens": 810})
    if cached is not None and llama:
        body["timings"] = {"cache_n": cached, "prompt_n": 800 - cached}
    elif cached is not None:
        body["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
    return 200, body, seconds


def test_prefix_cache_reuse_trusts_the_servers_count_over_the_clock():
    said = cap.judge_prefix_cache([(timed(0.5, 0), timed(0.45, 790))] * 3)
    assert said.verdict == cap.PASS and "790 of 810 prompt tokens from cache" in said.evidence
    llama = cap.judge_prefix_cache([(timed(0.5, 0, True), timed(0.05, 799, True))] * 3)
    assert llama.verdict == cap.PASS and "799" in llama.evidence
    none_cached = cap.judge_prefix_cache([(timed(0.5, 0), timed(0.1, 0))] * 3)  # faster, but the server says 0
    assert none_cached.verdict == cap.FAIL
    header = cap.judge_prefix_cache([(timed(0.5, 0, True), timed(0.5, 12, True))] * 3)  # the template's header only
    assert header.verdict == cap.FAIL and "server: 12 of 810 prompt tokens" in header.evidence
    by_time = cap.judge_prefix_cache([(timed(0.5), timed(0.1)), (timed(0.5), timed(0.2)), (timed(0.5), timed(0.6))])
    assert by_time.verdict == cap.PASS and by_time.value == pytest.approx(0.4)  # median of 0.2, 0.4, 1.2
    assert cap.judge_prefix_cache([(timed(0.5), timed(0.45))] * 3).verdict == cap.FAIL
    assert cap.judge_prefix_cache([(timed(0.5), timed(0.33))] * 3).verdict == cap.UNDECIDED


def test_one_server_per_runtime_with_its_first_chat_model(tmp_path):
    from conftest import write_scenario

    from gaplab.spec.scenario import load_scenario

    models = ({"name": "gemma3-270m", "api": "completions", "quants": ["Q8_0"]},
              {"name": "smollm2-135m", "api": "chat", "quants": ["Q8_0", "F16"]})
    path = write_scenario(tmp_path, {"name": "a", "kind": "llamacpp"}, (8, 8), {"concurrency": [1, 2]}, models)
    cells = load_scenario(path).cells()
    picked = probes.servers_to_probe(cells)
    assert [c.server_key for c in picked] == ["a/smollm2-135m/Q8_0"]
    assert len(probes.servers_to_probe(cells, every_model=True)) == 3
    same_server = [c for c in cells if c.server_key == "a/smollm2-135m/Q8_0"][-1]  # another load, one server
    assert probes.probe_key(picked[0]) == probes.probe_key(same_server)
    other_quant = [c for c in cells if c.server_key == "a/smollm2-135m/F16"][0]
    assert probes.probe_key(picked[0]) != probes.probe_key(other_quant)


def found(kind: str, capability: str, verdict: str) -> dict:
    return {"runtime_kind": kind, "runtime": f"{kind}-x", "capability": capability, "verdict": verdict}


def test_the_articles_tables_agree_or_differ_with_every_server_of_their_kind():
    published = page.load_published()
    assert set(published["runtime"]) <= set(page.KINDS) and published.height >= 15
    here = pl.DataFrame([found("vllm", "concurrent streams", cap.PASS), found("vllm", "tool calls", cap.NOT_OFFERED),
                         found("llamacpp", "concurrent streams", cap.FAIL),
                         found("vllm", "prefix cache reuse", cap.UNDECIDED)])
    side = page.beside(here, published)
    verdict = {(r["runtime"], r["capability"], r["article"]): r["verdict"] for r in side.iter_rows(named=True)}
    assert verdict[("vLLM", "tool calls", "dgx-spark-vllm-vs-ollama-same-model")] == "differs"
    assert all(v == "agrees" for (rt, c, _), v in verdict.items() if (rt, c) == ("vLLM", "concurrent streams"))
    # "limited" is a matter of degree, which a pass or a fail does not settle
    assert verdict[("llama.cpp", "concurrent streams", "vLLM vs llama.cpp vs Ollama on DGX Spark")].startswith(
        "a matter of degree")
    assert verdict[("vLLM", "prefix cache reuse", "vLLM vs Ollama production guide")] == "undecided here"
    assert verdict[("Ollama", "tool calls", "dgx-spark-vllm-vs-ollama-same-model")].startswith("not measured here")
    assert verdict[("vLLM", "speculative decoding", "vLLM vs llama.cpp vs Ollama on DGX Spark")].startswith("not probed")
    assert "differs" not in page.story(pl.DataFrame(), side)


@pytest.mark.parametrize("text, error", [
    ("a.txt,A,tgi,tool calls,yes,x", r"capabilities.csv: row 3: runtime 'tgi' is not one of llamacpp, ollama, sglang, vllm"),
    ("a.txt,A,vllm,tool-calls,yes,x", r"row 3: capability 'tool-calls' is not one of streamed usage"),
    ("a.txt,A,vllm,tool calls,maybe,x", r"row 3: says 'maybe' is not one of yes, no, limited"),
])
def test_a_bad_row_in_the_articles_table_names_its_row_and_field(tmp_path, text, error):
    bad = tmp_path / "capabilities.csv"
    bad.write_text("seed_file,source,runtime,capability,says,words\na.txt,A,vllm,tool calls,yes,x\n" + text + "\n")
    with pytest.raises(ValueError, match=error):
        page.load_published(bad)


def test_a_table_without_a_column_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "capabilities.csv"
    bad.write_text("seed_file,source,runtime,capability,words\na.txt,A,vllm,tool calls,x\n")
    with pytest.raises(ValueError, match=r"capabilities.csv: no column 'says'; the columns are seed_file"):
        page.load_published(bad)


def test_a_server_that_does_not_answer_is_stored_as_failed_and_probed_again(tmp_path):
    import yaml

    from gaplab.runtimes.process import free_port
    from gaplab.storage import store

    path = tmp_path / "attach.yaml"
    path.write_text(yaml.safe_dump({
        "name": "gone", "runtimes": [{"name": "gone", "kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"}],
        "models": [{"name": "m", "api": "chat", "quants": ["Q8_0"]}],
        "workloads": [{"name": "w", "prompt_tokens": 8, "output_tokens": 8}], "load": {"concurrency": [1]}}))
    found, skipped = probes.measure(path, tmp_path / "raw")
    assert skipped == 0 and [f.capability for f in found[0][1]] == ["server start"]
    assert "no OpenAI-compatible server answers" in found[0][1][0].evidence
    stored = store.read_table(tmp_path / "raw", "capability")
    assert stored["verdict"].to_list() == [cap.FAIL] and stored["runtime_version"][0] == "unknown"
    machine = stored["machine_id"][0]
    assert page.measured(tmp_path / "raw", machine).is_empty()  # a server start is not a probe
    assert page.broken(tmp_path / "raw", machine)["server"].to_list() == ["gone / m / Q8_0"]
    assert "could not run" in page.story(page.measured(tmp_path / "raw", machine), pl.DataFrame(),
                                         page.broken(tmp_path / "raw", machine))
    again, skipped = probes.measure(path, tmp_path / "raw")
    assert skipped == 0 and len(again) == 1
