"""gaplab.quality against the real llama.cpp build and the SmolLM2 files (`make test` provisions
them; F16 and Q4_0 are made here with llama-quantize when missing, a few seconds each)."""

import asyncio
import json
import os

import httpx
import polars as pl
import pytest
import yaml

from gaplab import quality as q
from gaplab.provision import models
from gaplab.report import quality as qframes
from gaplab.runtimes.llamacpp import llama_server
from gaplab.spec.scenario import RuntimeSpec
from gaplab.storage import store

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def smol(llama_ready):
    for quant in ("F16", "Q8_0", "Q4_0"):
        models.quantize(MODEL, quant)
    return models


def test_f16_against_itself_is_identical_and_4_bit_strays_further_than_q8(smol):
    found = {r.quant: r.metrics for r in q.fidelity(MODEL, ["F16", "Q8_0", "Q4_0"], reference="F16", chunks=2,
                                                      self_check=True)}
    print({k: {m: v[0] for m, v in r.items()} for k, r in found.items()})
    assert found["F16"]["n_tokens"][0] == 2 * 255
    assert abs(found["F16"]["kld_mean"][0]) < 1e-4
    assert found["F16"]["top1_agreement_pct"][0] == 100.0
    assert found["Q8_0"]["kld_mean"][0] > 1e-4  # requantized: a real, measurable loss
    assert found["Q4_0"]["kld_mean"][0] > found["Q8_0"]["kld_mean"][0]
    assert found["Q4_0"]["top1_agreement_pct"][0] < found["Q8_0"]["top1_agreement_pct"][0] < 100
    assert not list(q.QUALITY_DIR.glob(f"*-{os.getpid()}.logits"))  # the big distributions file is gone


@pytest.fixture(scope="module")
def server(llama_ready):
    with llama_server(RuntimeSpec(name="q", kind="llamacpp", parallel=2), MODEL, "Q4_1") as srv:
        yield srv


def test_the_evaluation_text_holds_more_than_20000_tokens(server):
    text = q.eval_text().read_text()
    resp = httpx.post(server.base_url.removesuffix("/v1") + "/tokenize", json={"content": text}, timeout=60)
    assert len(resp.json()["tokens"]) >= 20_000


def test_a_few_questions_through_llama_server(server):
    items = q.load_eval_set(q.EVAL_SET)[:6]
    answers = asyncio.run(q.ask_all(server.base_url, server.served_model, "chat", items, concurrency=2,
                                    token_ids=True))
    assert [a.item.id for a in answers] == [i.id for i in items]  # in item order, whatever finished first
    for a in answers:
        row = a.row()
        assert row["error"] is None and isinstance(row["completion"], str)
        assert row["finish_reason"] in ("stop", "length") and 1 <= row["completion_tokens"] <= q.MAX_TOKENS
        assert "\n" not in row["completion"]  # the stop string cut the answer at its line
        assert row["correct"] == q.score(a.item, row["completion"])[0]
        if row["completion"].strip():
            ids = row["completion_token_ids"]
            assert ids and all(isinstance(t, int) for t in ids) and len(ids) <= row["completion_tokens"] + 1
    cont = asyncio.run(q.continue_all(server.base_url, server.served_model, "chat", q.continuation_items()[:2], 2,
                                      max_tokens=12))
    assert all(c.error is None and c.completion_tokens == 12 and c.token_ids for c in cont)


def test_measure_stores_runs_keyed_like_the_speed_data_and_skips_them_next_time(smol, tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "q-it", "runtimes": [{"name": "one", "kind": "llamacpp", "parallel": 1}],
        "models": [{"name": MODEL, "api": "chat", "quants": ["Q8_0", "Q4_1"]}],
        "workloads": [{"name": "w", "prompt_tokens": 8, "output_tokens": 8}],
        "load": {"concurrency": [1]}}))
    eval_set = tmp_path / "mine.jsonl"
    eval_set.write_text("".join(json.dumps(i) + "\n" for i in q.make_eval_set(7, 4)))
    raw = tmp_path / "raw"
    res = q.measure(scenario, raw_dir=raw, chunks=2, eval_path=eval_set, progress=False)
    assert (res.fidelity_runs, res.task_runs, res.agreement_runs, res.failed) == (2, 2, 2, [])
    figures, answers = qframes.read_quality(raw)
    fid = qframes.fidelity_frame(figures)
    assert set(fid["reference"]) == {"Q8_0"}  # the largest file of the scenario's quants
    assert fid.filter(pl.col("quant") == "Q4_1")["kld"][0] > 0
    task = qframes.task_frame(figures)
    assert set(task["runtime"]) == {"one"} and set(task["questions"]) == {4} and set(task["eval_set"]) == {"mine"}
    assert answers.filter(pl.col("workload") == "task:mine").height == 8
    runs = store.read_table(raw, "quality")
    assert runs["hardware_id"].n_unique() == 1 and runs["status"].unique().to_list() == ["complete"]
    for path in raw.rglob("*.parquet"):  # the folder says what the rows say
        hw, runtime, model, quant = path.relative_to(raw).parts[:4]
        t = pl.read_parquet(path)
        assert set(t["runtime"]) == {runtime} and set(t["quant"]) == {quant} and set(t["model"]) == {model}
    files = sorted(raw.rglob("*.parquet"))
    again = q.measure(scenario, raw_dir=raw, chunks=2, eval_path=eval_set, progress=False)
    assert (again.fidelity_runs, again.task_runs, again.agreement_runs) == (0, 0, 0) and again.skipped == 6
    assert sorted(raw.rglob("*.parquet")) == files
