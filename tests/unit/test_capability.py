"""The capability probes' judgements, on responses written as each runtime's API answers (the
probes against real servers are in tests/integration), and the report's matrix."""

import json

import polars as pl
import pytest

from gaplab import capability as cap
from gaplab.records import CONTENT, USAGE, RequestRecord
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


def test_a_4xx_is_not_offered_and_a_5xx_or_no_answer_a_failure():
    refused = cap.judge_tool_call(400, {"error": {"message": "requires --tool-call-parser"}})
    assert refused.verdict == cap.NOT_OFFERED and refused.http_status == 400 and "tool-call-parser" in refused.evidence
    assert cap.judge_json_schema(500, "internal error").verdict == cap.FAIL
    assert cap.judge_logprobs(None, "ConnectError: refused").verdict == cap.FAIL


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


def stream(tokens: int, usage: bool = True, t0: int = 0, step: int = 10, error: str | None = None) -> RequestRecord:
    rec = RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0, sent_ns=t0, error=error, http_status=200)
    rec.chunks = [(t0 + (k + 1) * step, CONTENT, 3) for k in range(tokens)] + ([(t0 + 999, USAGE, 0)] if usage else [])
    if tokens:
        rec.first_token_ns, rec.last_token_ns = rec.chunks[0][0], rec.chunks[tokens - 1][0]
    if usage:
        rec.prompt_tokens, rec.completion_tokens = 9, tokens
    return rec


def test_streamed_usage_and_forced_length():
    assert cap.judge_usage(stream(5)).verdict == cap.PASS
    assert cap.judge_usage(stream(5, usage=False)).verdict == cap.FAIL
    assert cap.judge_forced_length(stream(cap.FORCED_TOKENS, usage=False), True).verdict == cap.PASS  # counted chunks
    assert cap.judge_forced_length(stream(3), True).verdict == cap.FAIL
    short = cap.judge_forced_length(stream(3), False)  # a runtime with no option to ignore the end of text
    assert short.verdict == cap.NOT_OFFERED and short.value == 3


def test_streams_served_one_after_another_do_not_overlap():
    serial = [stream(4, t0=k * 100) for k in range(4)]  # each ends (t0+40) before the next starts
    together = [stream(4, t0=k) for k in range(4)]
    assert cap.judge_overlap(serial).verdict == cap.FAIL and cap.judge_overlap(serial).value == 1
    assert cap.judge_overlap(together).value == 4
    assert cap.most_at_once([(0, 10), (10, 20)]) == 1  # one ends as the next starts
    assert cap.most_at_once([(0, 10), (5, 20), (6, 7)]) == 3
    assert cap.judge_overlap([stream(4), stream(0, error="HTTP 503: busy")]).verdict == cap.FAIL


def timed(seconds: float, cached: int | None = None, llama: bool = False):
    body = answer(usage={"prompt_tokens": 800})
    if cached is not None and llama:
        body["timings"] = {"cache_n": cached, "prompt_n": 800 - cached}
    elif cached is not None:
        body["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
    return 200, body, seconds


def test_prefix_cache_reuse_trusts_the_servers_count_over_the_clock():
    said = cap.judge_prefix_cache([(timed(0.5, 0), timed(0.45, 790))] * 3)
    assert said.verdict == cap.PASS and "790 prompt tokens from cache" in said.evidence
    llama = cap.judge_prefix_cache([(timed(0.5, 0, True), timed(0.05, 799, True))] * 3)
    assert llama.verdict == cap.PASS and "799" in llama.evidence
    none_cached = cap.judge_prefix_cache([(timed(0.5, 0), timed(0.1, 0))] * 3)  # faster, but the server says 0
    assert none_cached.verdict == cap.FAIL
    by_time = cap.judge_prefix_cache([(timed(0.5), timed(0.1)), (timed(0.5), timed(0.2)), (timed(0.5), timed(0.6))])
    assert by_time.verdict == cap.PASS and by_time.value == pytest.approx(0.4)  # median of 0.2, 0.4, 1.2
    assert cap.judge_prefix_cache([(timed(0.5), timed(0.4))] * 3).verdict == cap.FAIL


def test_one_server_per_runtime_with_its_first_chat_model(tmp_path):
    from conftest import write_scenario

    from gaplab.scenario import load_scenario

    models = ({"name": "gemma3-270m", "api": "completions", "quants": ["Q8_0"]},
              {"name": "smollm2-135m", "api": "chat", "quants": ["Q8_0", "F16"]})
    path = write_scenario(tmp_path, {"name": "a", "kind": "llamacpp"}, (8, 8), {"concurrency": [1, 2]}, models)
    cells = load_scenario(path).cells()
    picked = cap.servers_to_probe(cells)
    assert [c.server_key for c in picked] == ["a/smollm2-135m/Q8_0"]
    assert len(cap.servers_to_probe(cells, every_model=True)) == 3
    assert cap.probe_key(picked[0]) == cap.probe_key([c for c in cells if c.server_key == "a/smollm2-135m/Q8_0"][-1])


def found(kind: str, capability: str, verdict: str) -> dict:
    return {"runtime_kind": kind, "runtime": f"{kind}-x", "capability": capability, "verdict": verdict}


def test_the_articles_tables_agree_or_differ_with_every_server_of_their_kind():
    published = page.load_published()
    assert set(published["runtime"]) <= set(page.KINDS) and published.height >= 15
    here = pl.DataFrame([found("vllm", "concurrent streams", cap.PASS), found("vllm", "tool calls", cap.NOT_OFFERED),
                         found("llamacpp", "concurrent streams", cap.FAIL)])
    side = page.beside(here, published)
    verdict = {(r["runtime"], r["capability"], r["article"]): r["verdict"] for r in side.iter_rows(named=True)}
    assert verdict[("vLLM", "tool calls", "dgx-spark-vllm-vs-ollama-same-model")] == "differs"
    assert all(v == "agrees" for (rt, c, _), v in verdict.items() if (rt, c) == ("vLLM", "concurrent streams"))
    assert verdict[("llama.cpp", "concurrent streams", "vLLM vs llama.cpp vs Ollama on DGX Spark")] == "agrees"
    assert verdict[("Ollama", "tool calls", "dgx-spark-vllm-vs-ollama-same-model")].startswith("not measured here")
    assert verdict[("vLLM", "speculative decoding", "vLLM vs llama.cpp vs Ollama on DGX Spark")].startswith("not probed")
    assert "differs" not in page.story(pl.DataFrame(), side)


def test_a_bad_row_in_the_articles_table_names_its_row_and_field(tmp_path):
    bad = tmp_path / "capabilities.csv"
    bad.write_text("seed_file,source,runtime,capability,says,words\n"
                   "a.txt,A,vllm,tool calls,yes,x\na.txt,A,tgi,tool calls,yes,x\n")
    with pytest.raises(ValueError, match=r"capabilities.csv: row 3: runtime 'tgi'"):
        page.load_published(bad)


def test_a_server_that_does_not_answer_is_stored_as_failed_and_probed_again(tmp_path):
    import yaml

    from gaplab import store
    from gaplab.runtimes.process import free_port

    path = tmp_path / "attach.yaml"
    path.write_text(yaml.safe_dump({
        "name": "gone", "runtimes": [{"name": "gone", "kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"}],
        "models": [{"name": "m", "api": "chat", "quants": ["Q8_0"]}],
        "workloads": [{"name": "w", "prompt_tokens": 8, "output_tokens": 8}], "load": {"concurrency": [1]}}))
    found, skipped = cap.measure(path, tmp_path / "raw")
    assert skipped == 0 and [f.capability for f in found[0][1]] == ["server start"]
    assert "no OpenAI-compatible server answers" in found[0][1][0].evidence
    stored = store.read_table(tmp_path / "raw", "capability")
    assert stored["verdict"].to_list() == [cap.FAIL] and stored["runtime_version"][0] == "unknown"
    again, skipped = cap.measure(path, tmp_path / "raw")
    assert skipped == 0 and len(again) == 1
