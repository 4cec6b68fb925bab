"""The like-for-like gate on runs written to real Parquet: a pair that differs in one thing is
flagged with that check, and only that one."""

import polars as pl

from gaplab.analysis import metrics
from gaplab.measure.records import RequestRecord
from gaplab.report import checker, claims, claims_file, fairness, speed
from gaplab.storage import store

SHA = "a" * 64


def requests(output: int, target: int = 16, prompt: int = 40, gap: int = 0) -> list[RequestRecord]:
    """Six answered requests of `output` tokens (asked for `target`), the server counting `prompt`
    prompt tokens; each decoded at a pace that `gap` ns per token slows."""
    out = []
    for i in range(6):
        t0 = i * 10**9
        step = 10**7 + gap
        out.append(RequestRecord(index=i, user=0, warmup=False, scheduled_ns=t0, sent_ns=t0, first_token_ns=t0 + 10**8,
                                 last_token_ns=t0 + 10**8 + step * (output - 1), end_ns=t0 + 10**8 + step * output,
                                 prompt_tokens=prompt, completion_tokens=output, finish_reason="length",
                                 http_status=200, output_chars=4 * output, target_output_tokens=target,
                                 chunks=[(t0 + 10**8 + k * step, "content", 4) for k in range(output)]))
    return out


def write(raw, runtime: str, quant: str, trial: int, recs, sha: str = SHA, engine: str = "llama.cpp b1",
          other_cores: float = 0.0, threads: int = 1, kind: str = "llamacpp") -> None:
    run_id = f"20260101T00000{trial}Z-{runtime[:3]}{quant[:3].lower()}"
    ident = {"run_id": run_id, "cell_id": f"{runtime}/m/{quant}/w/c1", "cell_key": f"{runtime}{quant}",
             "scenario": "s", "hardware_id": "hw", "machine_id": "m-1", "series_id": f"20260101T000000Z-{runtime}",
             "trial": trial, "runtime": runtime, "runtime_kind": kind, "runtime_version": "v", "model": "m",
             "quant": quant, "workload": "w", "concurrency": 1, "threads": threads, "parallel": 1}
    store.write_run(raw, ident, {"status": "complete", "model_sha256": sha, "engine_version": engine,
                                 "other_cores": other_cores}, recs)


def gated(raw) -> pl.DataFrame:
    req = speed.scan_requests(raw, "m-1")
    rows = claims.claims_table(metrics.trial_summary(req))
    return fairness.gate(rows, fairness.facts(raw, "m-1", req)).filter(pl.col("kind") == "faster")


def test_a_pair_that_differs_only_in_its_output_length_fails_the_output_check(tmp_path):
    for t in (1, 2, 3):
        write(tmp_path, "full", "Q4", t, requests(16))
        write(tmp_path, "short", "Q4", t, requests(12))  # stopped early: 12 of the 16 tokens asked
    row = gated(tmp_path).row(0, named=True)
    assert row["like_for_like"] is False
    assert row["unlike"] == "output: 16 against 12 output tokens (asked for 16 and 16)"
    # the sentence names it (escaped as Markdown text)
    assert "is ahead. *Not like for like:* output\\: 16 against 12 output tokens" in row["text"]


def test_a_pair_that_differs_only_in_its_weights_fails_the_weights_check(tmp_path):
    for t in (1, 2, 3):
        write(tmp_path, "one", "Q4", t, requests(16))
        write(tmp_path, "two", "Q4", t, requests(16, gap=10**6), sha="b" * 64)
    row = gated(tmp_path).row(0, named=True)
    assert row["like_for_like"] is False and row["unlike"] == "weights: different files (Q4 against Q4)"


def test_a_like_for_like_pair_passes_and_each_other_check_can_fail(tmp_path):
    for t in (1, 2, 3):
        write(tmp_path, "one", "Q4", t, requests(16))
        write(tmp_path, "two", "Q4", t, requests(16, gap=10**6))
    row = gated(tmp_path).row(0, named=True)
    assert row["like_for_like"] is True and row["unlike"] is None and "Not like for like" not in row["text"]
    assert "converted" not in row["text"]
    base = fairness.facts(tmp_path, "m-1", speed.scan_requests(tmp_path, "m-1")).row(0, named=True)
    for change, check in [({"prompt_tokens": 44}, "prompt"), ({"threads": 2}, "threads"),
                          ({"engine": "llama.cpp b2 (Ollama's runner)"}, "engine"),
                          ({"other_cores": 0.6}, "machine"), ({"rate": 1.0, "lag_p99_ms": 80.0}, "lag")]:
        assert [f.split(":")[0] for f in fairness.failed(base, {**base, **change})] == [check], change
    # a prompt within 2% passes; engines of two kinds (vLLM against llama.cpp) are not a version gap
    assert fairness.failed(base, {**base, "prompt_tokens": base["prompt_tokens"] * 1.01}) == []
    assert fairness.failed(base, {**base, "engine": "vLLM 0.32.0"}) == []


def test_one_file_served_converted_passes_and_is_said(tmp_path):
    for t in (1, 2, 3):
        write(tmp_path, "gguf", "Q4_1", t, requests(16))
        write(tmp_path, "vllm", "BF16", t, requests(16, gap=10**6), kind="vllm")  # BF16 from the same Q4_1 file
    row = gated(tmp_path).row(0, named=True)
    assert row["like_for_like"] is True and row["text"].endswith("Both serve one weights file, Q4_1 converted to BF16.")


def test_the_checker_says_which_published_claims_compare_unlike_things(tmp_path):
    for t in (1, 2, 3):
        write(tmp_path, "one", "Q4", t, requests(16))
        write(tmp_path, "two", "Q4", t, requests(16, gap=10**6), sha="b" * 64)
    path = tmp_path / "claims.csv"
    path.write_text(",".join(claims_file.COLUMNS) + "\nc,s,src,one is faster,faster,runtime=one,runtime=two,"
                    "per_user_tok_s,1,,\n")
    req = speed.scan_requests(tmp_path, "m-1")
    trials = metrics.trial_summary(req)
    got = checker.check(claims_file.load_claims(path), trials, pl.DataFrame(), pl.DataFrame(),
                        cells_facts=fairness.facts(tmp_path, "m-1", req)).row(0, named=True)
    assert got["verdict"] == "holds here" and got["like_for_like"] == "no: weights"
    assert "[not like for like: weights: different files" in got["evidence"]


def test_a_note_names_the_failed_checks_of_any_pair_a_page_compares(tmp_path):
    for t in (1, 2, 3):
        write(tmp_path, "one", "Q4", t, requests(16))
        write(tmp_path, "two", "Q4", t, requests(16, gap=10**6), threads=2)
    cells = fairness.facts(tmp_path, "m-1", speed.scan_requests(tmp_path, "m-1"))
    assert fairness.note(cells, "m", "w", "one · Q4", "two · Q4", 1) == " *Not like for like:* threads\\: 1 against 2."
    assert fairness.note(cells, "m", "w", "one · Q4", "one · Q4", 1) == ""
