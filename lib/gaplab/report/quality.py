"""What the quality page reads: the newest runs, and the frames its tables and charts are drawn from."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gaplab.spec.config import RAW_DIR

K3 = ["hardware_id", "model", "quant"]
K4 = ["hardware_id", "runtime", "model", "quant"]


def latest_quality(quality: pl.DataFrame) -> pl.DataFrame:
    """Rows of the newest complete run of each quality cell on each machine (reruns replace older ones)."""
    quality = quality.with_columns(machine_id=pl.coalesce("machine_id", "hardware_id"))  # schema 1: class only
    runs = (quality.filter(pl.col("status") == "complete").select("machine_id", "cell_key", "run_id").unique()
            .sort("run_id").group_by(["machine_id", "cell_key"]).last())
    return quality.join(runs.select("run_id"), on="run_id", how="semi")


def read_quality(raw_dir: Path = RAW_DIR, machine_id: str = "") -> tuple[pl.DataFrame, pl.DataFrame]:
    """(figures, answers) of the newest complete quality runs, of one machine when given."""
    from gaplab.storage import store
    q = latest_quality(store.read_table(raw_dir, "quality"))
    a = store.read_table(raw_dir, "answers").join(q.select("run_id", "machine_id").unique(), on="run_id", how="semi")
    a = a.with_columns(machine_id=pl.coalesce("machine_id", "hardware_id"))
    if machine_id:
        q, a = q.filter(pl.col("machine_id") == machine_id), a.filter(pl.col("machine_id") == machine_id)
    return q, a


def _metric(name: str, col: str = "value") -> pl.Expr:
    return pl.col(col).filter(pl.col("metric") == name).first()


def fidelity_frame(quality: pl.DataFrame) -> pl.DataFrame:
    """One row per machine x model x quant: perplexity, KLD and top-1 agreement against the reference file."""
    return (quality.filter(pl.col("runtime") == "llama-perplexity").group_by(K3).agg(
        reference=pl.col("reference").first(), model_bytes=pl.col("model_bytes").first(),
        model_note=pl.col("model_note").first(), tokens=pl.col("n").first(),
        ppl=_metric("perplexity"), ppl_pm=_metric("perplexity", "uncertainty"),
        ppl_ratio=_metric("ppl_ratio"), ppl_ratio_pm=_metric("ppl_ratio", "uncertainty"),
        kld=_metric("kld_mean"), kld_pm=_metric("kld_mean", "uncertainty"), kld_p99=_metric("kld_p99"),
        top1_pct=_metric("top1_agreement_pct"), top1_pm=_metric("top1_agreement_pct", "uncertainty"),
    ).with_columns(  # the reference against itself: equal by definition, not measured
        ppl_ratio=pl.when(pl.col("quant") == pl.col("reference")).then(1.0).otherwise("ppl_ratio")))


def task_frame(quality: pl.DataFrame) -> pl.DataFrame:
    """One row per machine x runtime x model x quant x question set: accuracy and its 95% interval."""
    return (quality.filter(pl.col("metric") == "task_accuracy_pct")
            .select(*K4, "eval_set", accuracy_pct="value", acc_low="ci_low", acc_high="ci_high", questions="n"))


def quality_speed_size(quality: pl.DataFrame, summary: pl.DataFrame) -> pl.DataFrame:
    """Quality, file size and decode tok/s at one user, one row per machine x model x quant x runtime.

    Fidelity is a property of the file (joined on machine, model, quant); task accuracy and
    speed are properties of a runtime cell (joined on machine, runtime, model, quant).
    """
    return (fidelity_frame(quality)
            .join(task_frame(quality), on=K3, how="full", coalesce=True)  # attached servers have no fidelity
            .join(summary.filter(pl.col("concurrency") == 1).group_by(K4).agg(
                # cast: a server whose every stream came in one read has no per-user speed, a column of no type
                decode_tok_s=pl.col("per_user_tok_s").cast(pl.Float64).mean(), speed_run=pl.col("run_ids").first()),
                on=K4, how="left")
            .with_columns(size_mb=pl.col("model_bytes") / 1e6)
            .sort(["model", "size_mb"], descending=[False, True]))


def recovery(frame: pl.DataFrame) -> pl.DataFrame:
    """Each quant's task accuracy as % of the reference file's, the way published comparisons quote it."""
    ref = frame.filter(pl.col("quant") == pl.col("reference")).select(
        "hardware_id", "model", "runtime", ref_accuracy_pct="accuracy_pct")
    return (frame.join(ref, on=["hardware_id", "model", "runtime"], how="left")
            .with_columns(recovery_pct=pl.when(pl.col("ref_accuracy_pct") > 0)
                          .then(100 * pl.col("accuracy_pct") / pl.col("ref_accuracy_pct"))))


def recovery_beside_published(frame: pl.DataFrame, reference: pl.DataFrame) -> pl.DataFrame:
    """Recovery measured here next to the `*_recovery_pct` figures of data/reference/published_results.csv."""
    ours = (recovery(frame).filter(pl.col("accuracy_pct").is_not_null())
            .select(who=pl.lit("measured here"), source=pl.lit("gaplab (this report)"), hardware="hardware_id",
                    model="model", runtime="runtime", quant="quant",
                    benchmark=pl.format("{} ({} questions), vs {}", "eval_set", "questions", "reference"),
                    recovery_pct="recovery_pct",
                    note=pl.format("accuracy {}% [{}–{}] vs {}%", pl.col("accuracy_pct").round(1),
                                   pl.col("acc_low").round(1), pl.col("acc_high").round(1),
                                   pl.col("ref_accuracy_pct").round(1))))
    pub = (reference.filter(pl.col("metric").str.ends_with("_recovery_pct"))
           .select(who=pl.lit("published"), source="source", hardware="hardware", model="model", runtime="runtime",
                   quant="quant", benchmark=pl.col("metric").str.replace("_recovery_pct$", "") + ", vs FP16",
                   recovery_pct=pl.col("value").cast(pl.Float64), note=pl.col("note").fill_null("")))
    return pl.concat([ours, pub], how="vertical_relaxed")


def agreement(answers: pl.DataFrame) -> pl.DataFrame:
    """Pairs of runtimes that got the same prompts with one model and quant: how often their
    completions are identical, the mean common token prefix, and the first pair that differs."""
    keys = ["hardware_id", "model", "quant", "workload"]
    rows = []
    for key, grp in answers.filter(pl.col("error").is_null()).group_by(keys, maintain_order=True):
        by_rt = {rt: g for (rt,), g in grp.group_by(["runtime"])}
        names = sorted(by_rt)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pair = by_rt[a].join(by_rt[b], on="item_id", suffix="_b").sort("item_id")
                if pair.is_empty():
                    continue
                same = (pair["completion"] == pair["completion_b"]).to_list()
                prefixes = [common_prefix(x, y) for x, y in zip(pair["completion_token_ids"].to_list(),
                                                                   pair["completion_token_ids_b"].to_list())]
                lengths = [len(x) for x in pair["completion_token_ids"].to_list() if x is not None]
                known = [p for p in prefixes if p is not None]
                diff = pair.filter(pl.col("completion") != pl.col("completion_b"))
                ex = diff.row(0, named=True) if diff.height else None
                rows.append({**dict(zip(keys, key)), "runtime_a": a, "runtime_b": b, "prompts": pair.height,
                             "identical_pct": 100 * sum(same) / len(same),
                             "mean_prefix_tokens": sum(known) / len(known) if known else None,
                             "mean_tokens": sum(lengths) / len(lengths) if lengths else None,
                             "example_prompt": ex["question"] if ex else None,
                             "example_a": ex["completion"] if ex else None,
                             "example_b": ex["completion_b"] if ex else None,
                             "example_diverges_at": common_prefix(ex["completion_token_ids"],
                                                                  ex["completion_token_ids_b"]) if ex else None})
    schema = {"hardware_id": pl.String, "model": pl.String, "quant": pl.String, "workload": pl.String,
              "runtime_a": pl.String, "runtime_b": pl.String, "prompts": pl.Int64, "identical_pct": pl.Float64,
              "mean_prefix_tokens": pl.Float64, "mean_tokens": pl.Float64, "example_prompt": pl.String,
              "example_a": pl.String, "example_b": pl.String, "example_diverges_at": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def chart_points(frame: pl.DataFrame) -> pl.DataFrame:
    """What charts.quality_size_speed draws: the reference file sits at 100% by definition."""
    ref = pl.col("quant") == pl.col("reference")
    return frame.with_columns(
        top1_plot=pl.when(ref).then(100.0).otherwise("top1_pct"),
        top1_lo=pl.col("top1_pct") - pl.col("top1_pm"), top1_hi=pl.col("top1_pct") + pl.col("top1_pm"),
        label=pl.col("quant") + pl.when(pl.col("decode_tok_s").is_not_null())
        .then(pl.format(" · {} tok/s", pl.col("decode_tok_s").round(1))).otherwise(pl.lit("")))


def display_table(frame: pl.DataFrame) -> pl.DataFrame:
    """The measured figures as text, one row per model x quant (x runtime)."""
    def pm(v: str, u: str, digits: int) -> pl.Expr:
        return pl.when(pl.col(v).is_null()).then(pl.lit("reference")).otherwise(
            pl.format("{} ± {}", pl.col(v).round(digits), pl.col(u).round(digits)))

    return frame.select(
        "model", "quant", size_mb=pl.col("size_mb").round(0).cast(pl.Int64),
        perplexity=pl.format("{} ± {}", pl.col("ppl").round(2), pl.col("ppl_pm").round(2)),
        kld=pm("kld", "kld_pm", 5), same_top_token_pct=pm("top1_pct", "top1_pm", 2),
        task_accuracy_pct=pl.when(pl.col("accuracy_pct").is_null()).then(pl.lit("not measured")).otherwise(
            pl.format("{} [{}–{}]", pl.col("accuracy_pct").round(1), pl.col("acc_low").round(1),
                      pl.col("acc_high").round(1))),
        decode_tok_s_1_user=pl.col("decode_tok_s").round(1), runtime="runtime")


def common_prefix(a: list | None, b: list | None) -> int | None:
    if a is None or b is None:
        return None
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
