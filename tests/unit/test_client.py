import orjson
import pytest

from gaplab.measure.client import StreamClient, merged
from gaplab.measure.protocols import classify, fill_from_events, fill_from_ollama
from gaplab.measure.records import CONTENT, EMPTY, REASONING, ROLE, TOOL, USAGE, RequestRecord
from gaplab.runtimes import llamacpp, vllm
from gaplab.spec.scenario import RuntimeSpec


def test_role_only_and_empty_chunks_are_not_tokens():
    assert classify({"choices": [{"delta": {"role": "assistant", "content": None}}]}, "chat") == (ROLE, 0)
    assert classify({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, "chat") == (ROLE, 0)
    assert classify({"choices": [{"delta": {}, "finish_reason": "length"}]}, "chat") == (EMPTY, 0)
    assert classify({"choices": [{"text": "", "finish_reason": "length"}]}, "completions") == (EMPTY, 0)
    assert classify({"choices": [], "usage": {"completion_tokens": 3}}, "chat") == (USAGE, 0)


def test_text_reasoning_and_tool_chunks_are_tokens():
    assert classify({"choices": [{"delta": {"content": "Hi"}}]}, "chat") == (CONTENT, 2)
    assert classify({"choices": [{"delta": {"reasoning_content": "hmm"}}]}, "chat") == (REASONING, 3)
    assert classify({"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]}, "chat")[0] == TOOL
    assert classify({"choices": [{"text": " the"}]}, "completions") == (CONTENT, 4)


def _line(obj) -> bytes:
    return b"data: " + orjson.dumps(obj)


def test_first_token_skips_the_role_chunk_and_usage_fills_counts():
    rec = RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0)
    assert fill_from_events(rec, [
        (10, _line({"choices": [{"delta": {"role": "assistant"}}]})),
        (30, _line({"choices": [{"delta": {"content": "a"}}]})),
        (50, _line({"choices": [{"delta": {"content": "bc"}}]})),
        (60, _line({"choices": [{"delta": {}, "finish_reason": "length"}]})),
        (61, _line({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2},
                    "timings": {"predicted_n": 2}})),
        (62, b"data: [DONE]"),
    ], "chat") is True  # [DONE] ends it
    assert (rec.first_token_ns, rec.last_token_ns) == (30, 50)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.output_chars) == (4, 2, 3)
    assert rec.finish_reason == "length" and rec.server_timings == {"predicted_n": 2}
    assert [c[1] for c in rec.chunks] == ["role", "content", "content", "empty", "usage"]
    assert rec.error is None


def test_malformed_event_is_an_error_not_a_crash():
    rec = RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0)
    fill_from_events(rec, [(5, b"data: {not json"), (9, _line({"choices": [{"delta": {"content": "x"}}]}))], "chat")
    assert rec.error.startswith("malformed stream event") and rec.first_token_ns == 9


def _rec() -> RequestRecord:
    return RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0)


def test_a_stream_finishes_only_with_done_or_an_error_event():
    token = (1, _line({"choices": [{"delta": {"content": "x"}}]}))
    usage = (2, _line({"choices": [], "usage": {"completion_tokens": 1}}))
    assert fill_from_events(_rec(), [token, usage], "chat") is False  # no [DONE]: cut off
    rec = _rec()
    assert fill_from_events(rec, [token, (3, _line({"error": {"message": "oom"}}))], "chat") is True
    assert rec.error == "{'message': 'oom'}" and len(rec.chunks) == 1


def test_an_ollama_stream_finishes_only_with_done_true():
    line = (1, orjson.dumps({"message": {"content": "x"}, "done": False}))
    done = (2, orjson.dumps({"message": {"content": ""}, "done": True, "eval_count": 1}))
    assert fill_from_ollama(_rec(), [line, line], "chat") is False
    rec = _rec()
    assert fill_from_ollama(rec, [line, done], "chat") is True and rec.completion_tokens == 1
    assert fill_from_ollama(_rec(), [line, (3, b'{"error": "boom"}')], "chat") is True


def test_arrival_schedules_are_seeded_and_keep_their_rate():
    import statistics

    from gaplab.measure.loadgen import arrival_offsets

    assert arrival_offsets(4.0, 5, "constant") == [0.0, 0.25, 0.5, 0.75, 1.0]
    poisson = arrival_offsets(10.0, 20_000, "poisson", seed=3)
    assert poisson == arrival_offsets(10.0, 20_000, "poisson", seed=3) != arrival_offsets(10.0, 20_000, seed=4)
    gaps = [b - a for a, b in zip(poisson, poisson[1:])]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.03)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, rel=0.05)  # exponential: CV 1
    bursty = arrival_offsets(10.0, 20_000, "gamma", seed=3, shape=0.25)
    gaps = [b - a for a, b in zip(bursty, bursty[1:])]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.05)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(2.0, rel=0.1)  # CV 1/sqrt(shape)


@pytest.mark.parametrize("args, error", [
    ((0.0, 3), r"rate: got 0; give requests per second above 0"),
    ((-2.0, 3), r"rate: got -2"),
    ((1.0, 3, "uniform"), r"arrival: got 'uniform'; allowed: poisson, constant, gamma"),
    ((1.0, 3, "gamma", 0, 0.0), r"shape: got 0; a gamma shape must be above 0"),
])
def test_a_bad_schedule_is_refused_in_one_line(args, error):
    from gaplab.measure.loadgen import arrival_offsets

    with pytest.raises(ValueError, match=error):
        arrival_offsets(*args)


def test_merged_lays_nested_fields_over_without_dropping_siblings():
    base = {"model": "m", "options": {"num_predict": 48, "temperature": 0}, "stream": True}
    extra = {"options": {"num_thread": 1, "temperature": 0.5}, "keep_alive": "1m"}
    assert merged(base, extra) == {"model": "m", "options": {"num_predict": 48, "temperature": 0.5, "num_thread": 1},
                                   "stream": True, "keep_alive": "1m"}
    assert base["options"] == {"num_predict": 48, "temperature": 0}  # not changed in place
    assert merged({"a": {"b": 1}}, {"a": 2}) == {"a": 2}  # a value replaces a mapping


def _body(protocol: str, extra: dict, api: str = "chat") -> dict:
    client = StreamClient("http://127.0.0.1:9/v1", api, protocol=protocol)
    return orjson.loads(client.body("hi", 48, "m", extra))


def test_each_adapters_request_fields_keep_the_forced_length():
    user = {"options": {"num_thread": 1, "num_ctx": 2048}, "chat_template_kwargs": {"enable_thinking": False}}
    ollama = _body("ollama", user)  # Ollama's adapter passes the scenario's extra_body as it is
    assert ollama["options"] == {"num_predict": 48, "temperature": 0, "num_thread": 1, "num_ctx": 2048}
    assert ollama["stream"] is True and ollama["chat_template_kwargs"] == {"enable_thinking": False}
    for adapter in (llamacpp, vllm):
        spec = RuntimeSpec(name="r", kind=adapter.KIND.name, extra_body=user)
        body = _body("openai", adapter.request_fields(spec))
        assert (body["max_tokens"], body["ignore_eos"], body["stream"]) == (48, True, True)
        assert body["stream_options"] == {"include_usage": True} and body["options"] == user["options"]
    attached = _body("openai", {"ignore_eos": True, "top_k": 1}, "completions")  # kind openai: extra_body as given
    assert (attached["max_tokens"], attached["ignore_eos"], attached["top_k"], attached["prompt"]) == (48, True, 1, "hi")
