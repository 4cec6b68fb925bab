"""The quality tables as stored, and the frames and sentences the quality page reads
(gaplab.report.quality, gaplab.report.quality_prose)."""

from pathlib import Path

import polars as pl
import pytest

from gaplab import quality as q
from gaplab.report import quality as qframes
from gaplab.report import quality_prose as qprose
from gaplab.storage import store

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- stored tables and the page's joins

HW = "hw"


def ident(run_id, runtime, model, quant, **kw):
    base = {"run_id": run_id, "cell_id": f"quality/{runtime}/{model}/{quant}", "cell_key": f"k-{run_id}",
            "scenario": "s", "hardware_id": HW, "machine_id": HW, "series_id": run_id, "trial": 1, "runtime": runtime, "runtime_kind": "llamacpp",
            "runtime_version": "v", "model": model, "quant": quant, "workload": "w", "concurrency": 1,
            "threads": 1, "parallel": 1}
    return {**base, **kw}


def fid_rows(ref, ppl, kld=None, top1=None, size=100_000_000):
    common = {"reference": ref, "model_bytes": size, "n": 1020, "status": "complete", "model_note": "x"}
    rows = [{**common, "metric": "perplexity", "value": ppl, "uncertainty": 1.0}]
    if kld is not None:
        rows += [{**common, "metric": "kld_mean", "value": kld, "uncertainty": kld / 10},
                 {**common, "metric": "top1_agreement_pct", "value": top1, "uncertainty": 0.5},
                 {**common, "metric": "ppl_ratio", "value": ppl / 20, "uncertainty": 0.003}]
    return rows


def task_rows(acc):
    lo, hi = q.wilson(int(acc * 2), 200)
    return [{"metric": "task_accuracy_pct", "value": acc, "ci_low": 100 * lo, "ci_high": 100 * hi, "n": 200,
             "unit": "%", "eval_set": "set", "status": "complete"}]


@pytest.fixture
def stored(tmp_path):
    raw = tmp_path / "raw"
    n = iter(range(100))

    def rid():
        return f"20260101T0000{next(n):02d}Z-00000{0}"

    for quant, ppl, kld, top1, size in (("F16", 20.0, None, None, 3e8), ("Q8_0", 20.1, 0.004, 97.0, 1.6e8),
                                         ("Q4_0", 23.0, 0.09, 85.0, 0.9e8)):
        store.write_quality(raw, ident(rid(), "llama-perplexity", "m", quant),
                            fid_rows("F16", ppl, kld, top1, int(size)), {})
    for quant, acc in (("F16", 40.0), ("Q8_0", 39.0), ("Q4_0", 20.0)):
        answers = [{"item_id": f"i{k}", "kind": "add", "correct": k < 2, "completion": str(k),
                    "completion_token_ids": [k]} for k in range(4)]
        store.write_quality(raw, ident(rid(), "batch", "m", quant), task_rows(acc), {}, answers=answers)
    return raw


def summary_frame():
    return pl.DataFrame({"hardware_id": [HW] * 4, "runtime": ["batch"] * 4, "model": ["m"] * 4,
                         "quant": ["F16", "Q8_0", "Q4_0", "Q4_0"], "concurrency": [1, 1, 1, 8],
                         "per_user_tok_s": [10.0, 18.0, 30.0, 5.0], "run_ids": ["a", "b", "c", "d"]})


def test_quality_runs_are_stored_with_the_identity_and_never_rewritten(stored):
    files = sorted(p.name.split(".", 1)[1] for p in stored.rglob("*.parquet"))
    assert files.count("quality.parquet") == 6 and files.count("answers.parquet") == 3
    qt = store.read_table(stored, "quality")
    assert set(qt["hardware_id"]) == {HW} and qt["run_id"].null_count() == 0
    assert store.completed_quality(stored, HW) == set(qt["cell_key"])
    assert store.completed_quality(stored, "other") == set()
    one = qt.row(0, named=True)
    with pytest.raises(FileExistsError):
        store.write_quality(stored, ident(one["run_id"], one["runtime"], one["model"], one["quant"]), [], {})
    with pytest.raises(ValueError, match="hardware_id"):
        store.write_quality(stored, {k: v for k, v in ident("r", "x", "m", "F16").items() if k != "hardware_id"}, [], {})


def test_a_failed_run_is_a_row_and_does_not_count_as_measured(tmp_path):
    store.write_quality(tmp_path, ident("20260101T000000Z-aaaaaa", "batch", "m", "F16"),
                        [{"status": "failed", "error": "llama-server exited"}], {})
    assert store.completed_quality(tmp_path, HW) == set()
    assert store.read_table(tmp_path, "quality")["error"].to_list() == ["llama-server exited"]


def test_quality_speed_and_size_join_in_one_frame(stored):
    figures, answers = qframes.read_quality(stored, HW)
    frame = qframes.quality_speed_size(figures, summary_frame())
    assert frame.height == 3 and frame["quant"].to_list() == ["F16", "Q8_0", "Q4_0"]  # largest file first
    row = frame.filter(pl.col("quant") == "Q4_0").row(0, named=True)
    assert row["decode_tok_s"] == 30.0  # the 1-user cell, not the 8-user one
    assert row["accuracy_pct"] == 20.0 and row["kld"] == 0.09 and row["size_mb"] == 90.0
    ref = frame.filter(pl.col("quant") == "F16").row(0, named=True)
    assert ref["ppl_ratio"] == 1.0 and ref["kld"] is None  # the reference is not compared with itself
    pts = qframes.chart_points(frame)
    assert pts.filter(pl.col("quant") == "F16")["top1_plot"][0] == 100.0
    assert pts.filter(pl.col("quant") == "Q8_0")["top1_lo"][0] == pytest.approx(96.5)


def test_an_attached_server_without_local_files_still_has_its_row(stored):
    store.write_quality(stored, ident("20260101T000099Z-bbbbbb", "gpu-vllm", "m", "BF16", runtime_kind="openai"),
                        task_rows(41.0), {})
    summary = summary_frame().vstack(pl.DataFrame({
        "hardware_id": [HW], "runtime": ["gpu-vllm"], "model": ["m"], "quant": ["BF16"], "concurrency": [1],
        "per_user_tok_s": [99.0], "run_ids": ["e"]}))
    frame = qframes.quality_speed_size(qframes.read_quality(stored, HW)[0], summary)
    row = frame.filter(pl.col("quant") == "BF16").row(0, named=True)
    assert frame.height == 4 and row["accuracy_pct"] == 41.0 and row["decode_tok_s"] == 99.0
    assert row["kld"] is None and row["size_mb"] is None


def test_recovery_is_a_share_of_the_reference_files_score(stored):
    frame = qframes.quality_speed_size(qframes.read_quality(stored, HW)[0], summary_frame())
    rec = qframes.recovery(frame)
    assert rec.filter(pl.col("quant") == "Q8_0")["recovery_pct"][0] == pytest.approx(97.5)
    ref = pl.DataFrame({"source": ["s"], "hardware": ["gpu"], "model": ["big"], "runtime": ["vLLM"],
                        "quant": ["NVFP4"], "concurrency": [1], "metric": ["mmlu_recovery_pct"], "value": [97.5],
                        "unit": ["%"], "note": [None]})
    both = qframes.recovery_beside_published(frame, ref)
    assert both["who"].to_list().count("published") == 1 and both.height == 4
    assert both.filter(pl.col("who") == "published")["benchmark"][0].startswith("mmlu")


def test_the_pick_is_the_fastest_file_that_keeps_quality(stored):
    frame = qframes.quality_speed_size(qframes.read_quality(stored, HW)[0], summary_frame())
    text = qprose.pick_story(frame, max_ppl_increase_pct=2.0)
    assert "pick **Q8_0**" in text and "Q4_0 is faster (30.0 tok/s)" in text and "+15.0%" in text
    loose = qprose.pick_story(frame, max_ppl_increase_pct=20.0)  # perplexity passes now; accuracy still fails
    assert "pick **Q8_0**" in loose and "task accuracy (20.0%, 95% interval up to 26.1%) is below F16's" in loose


def test_agreement_counts_identical_completions_and_the_common_prefix():
    rows = []
    for rt, comps in (("a", [("x y", [1, 2]), ("p q", [5, 6]), ("m", [7])]),
                      ("b", [("x y", [1, 2]), ("p r", [5, 9]), ("n", [8])])):
        for k, (text, ids) in enumerate(comps):
            rows.append({"hardware_id": HW, "model": "m", "quant": "Q8_0", "workload": "agree:t", "runtime": rt,
                         "item_id": f"i{k}", "question": f"prompt {k}", "completion": text,
                         "completion_token_ids": ids, "error": None})
    t = qframes.agreement(pl.DataFrame(rows))
    r = t.row(0, named=True)
    assert (r["runtime_a"], r["runtime_b"], r["prompts"]) == ("a", "b", 3)
    assert r["identical_pct"] == pytest.approx(100 / 3)
    assert r["mean_prefix_tokens"] == pytest.approx((2 + 1 + 0) / 3)
    assert (r["example_prompt"], r["example_a"], r["example_b"], r["example_diverges_at"]) == (
        "prompt 1", "p q", "p r", 1)
    assert "p q" in qprose.example_pair(t) and "33% of 3 prompts" in qprose.agreement_story(t)
    assert qframes.common_prefix([1, 2, 3], [1, 2]) == 2 and qframes.common_prefix(None, [1]) is None


def test_a_server_that_returns_no_token_ids_or_per_user_speed_still_has_its_sentences(stored):
    # an attached server whose streams arrive in one read and who returns no token ids
    rows = [{"hardware_id": HW, "model": "m", "quant": "Q8_0", "workload": "agree:t", "runtime": rt,
             "item_id": "i0", "question": "prompt 0", "completion": f"text {rt}", "completion_token_ids": None,
             "error": None} for rt in ("a", "b")]
    t = qframes.agreement(pl.DataFrame(rows, schema_overrides={"completion_token_ids": pl.List(pl.Int64)}))
    assert "0% of 1 prompts." in qprose.agreement_story(t) and "continuations differ." in qprose.example_pair(t)
    speedless = summary_frame().with_columns(per_user_tok_s=pl.lit(None))
    frame = qframes.quality_speed_size(qframes.read_quality(stored, HW)[0], speedless)
    assert frame["decode_tok_s"].dtype == pl.Float64 and not qframes.display_table(frame).is_empty()


def test_empty_store_gives_empty_frames_and_a_hint(tmp_path):
    figures, answers = qframes.read_quality(tmp_path)
    frame = qframes.quality_speed_size(figures, summary_frame())
    assert frame.is_empty() and qframes.agreement(answers).is_empty()
    assert "gaplab quality" in qprose.setup_story(figures)
    assert "gaplab quality" in qprose.pick_story(frame)


def test_committed_quality_runs_keep_their_contract():
    """Each committed quality run has its figures table; answers never come without one.

    Walks the tree, not git's index, so a copy of the project outside a checkout is checked too."""
    runs: dict = {}
    for p in (ROOT / "data" / "raw").rglob("*.parquet"):
        if p.name.endswith((".quality.parquet", ".answers.parquet")):
            runs.setdefault((p.parent, p.name.split(".")[0]), set()).add(p.name.split(".")[1])
    assert runs, "no committed quality runs under data/raw: the published quality page would be empty"
    assert all("quality" in tables for tables in runs.values()), runs
    for (folder, run_id), _ in runs.items():
        t = pl.read_parquet(folder / f"{run_id}.quality.parquet")
        assert set(t["status"]) <= {"complete", "failed"} and t["run_id"].unique().to_list() == [run_id]
