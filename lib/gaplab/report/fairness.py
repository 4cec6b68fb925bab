"""Like for like: what two measured configurations must share before a comparison of them is a
finding, each check computed from the stored rows.

A claims row that compares two configurations (claims.claims_table) gets `like_for_like` and,
where it is False, `unlike`: the checks it failed, with the figures that failed them. Its text
then names them, so the site never states a verdict over unlike things as a plain one.

The checks (CHECKS), per side over the measured requests and runs of its cell:
- prompt: the same prompt tokens by the servers' own counts (usage), within PROMPT_TOLERANCE:
  chat templates add tokens, so the same text can be a different prompt;
- output: the same output tokens, the forced length honoured on both sides (median completion
  tokens equal to the target, on both);
- weights: the same weights, by the model file's sha256 (a vLLM server converts the GGUF file it
  names, so the same sha256 there means the same source file, converted);
- threads: the same threads;
- engine: the same engine version where both sides run one engine (Ollama's runner and gaplab's
  llama.cpp are both llama.cpp): otherwise the gap is the version's as well as the wrapper's;
- lag: open loop only, the client sending on time (p99 send lag within load.max_lag_ms);
- machine: no trial of either side shared the machine with more than CONTENDED_CORES of other
  work (telemetry.background).
Output agreement at temperature 0 is the quality page's (agreement and task accuracy per file).
"""

from __future__ import annotations

import polars as pl

from gaplab.analysis.metrics import selected_runs
from gaplab.measure.telemetry import CONTENDED_CORES
from gaplab.report.markup import plain
from gaplab.storage import run_record, store

CHECKS = {"prompt": "same prompt tokens", "output": "same output tokens", "weights": "same weights",
          "threads": "same threads", "engine": "same engine version", "lag": "client on time",
          "machine": "uncontended machine"}
PROMPT_TOLERANCE = 0.02
CONVERTED = ("BF16", "FP16", "FP32")  # dtypes vLLM serves a GGUF file's weights in
KEYS = ["model", "workload", "config", "concurrency"]


def facts(raw_dir, machine_id: str, requests: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """One row per configuration, model, workload and load level: what the checks compare.
    requests: the measured request rows (speed.scan_requests), a frame or a lazy scan."""
    lazy = requests.lazy().with_columns(config=pl.col("runtime") + " · " + pl.col("quant"))
    per = lazy.filter(pl.col("ok")).group_by(KEYS).agg(
        prompt_tokens=pl.col("prompt_tokens").median(),
        output_tokens=pl.col("completion_tokens").median(),
        target_output=pl.col("target_output_tokens").median(),
        threads=pl.col("threads").first(),
        rate=pl.col("rate").first(),
        lag_p99_ms=(pl.col("sent_ns") - pl.col("scheduled_ns")).quantile(0.99) / 1e6,
        run_ids=pl.col("run_id").unique(),
    ).collect()
    runs = selected_runs(store.read_table(raw_dir, "run"), None).filter(pl.col("machine_id") == machine_id)
    runs = runs.select("run_id", "model_sha256", "engine_version", "other_cores").join(
        run_record.settings(runs).select("run_id", "max_lag_ms"), on="run_id", how="left")
    by_run = {r["run_id"]: r for r in runs.iter_rows(named=True)}
    rows = []
    for r in per.iter_rows(named=True):
        mine = [by_run[i] for i in r.pop("run_ids") if i in by_run]
        lags = [m["max_lag_ms"] for m in mine]
        rows.append({**r, "sha256": ",".join(sorted({m["model_sha256"] or "" for m in mine})),
                     "engine": ",".join(sorted({m["engine_version"] or "" for m in mine})),
                     "other_cores": max((m["other_cores"] or 0.0 for m in mine), default=0.0),
                     "max_lag_ms": min(lags, default=run_record.LAG_MS)})
    return pl.DataFrame(rows, infer_schema_length=None)


def _llama_build(engine: str) -> str:
    return engine.split(" (")[0] if engine.startswith("llama.cpp") else ""


def failed(a: dict, b: dict) -> list[str]:
    """The checks a pair of facts rows fails, each as '<check>: <figures>'."""
    out = []
    pa, pb = a["prompt_tokens"], b["prompt_tokens"]
    if pa and pb and abs(pa - pb) / max(pa, pb) > PROMPT_TOLERANCE:
        out.append(f"prompt: {pa:g} against {pb:g} prompt tokens by the servers' counts")
    if a["output_tokens"] != b["output_tokens"] or a["output_tokens"] != a["target_output"] \
            or b["output_tokens"] != b["target_output"]:
        out.append(f"output: {a['output_tokens']:g} against {b['output_tokens']:g} output tokens "
                   f"(asked for {a['target_output']:g} and {b['target_output']:g})")
    if a["sha256"] != b["sha256"]:
        out.append(f"weights: different files ({a['config'].split(' · ')[1]} against {b['config'].split(' · ')[1]})")
    if a["threads"] != b["threads"]:
        out.append(f"threads: {a['threads']} against {b['threads']}")
    ea, eb = _llama_build(a["engine"]), _llama_build(b["engine"])
    if ea and eb and ea != eb:
        out.append(f"engine: {ea} against {eb}")
    late = [f"{x['config']} {x['lag_p99_ms']:.0f} ms" for x in (a, b)
            if x["rate"] is not None and x["lag_p99_ms"] is not None and x["lag_p99_ms"] > x["max_lag_ms"]]
    if late:
        out.append(f"lag: the client sent late (p99 {', '.join(late)})")
    busy = max(a["other_cores"], b["other_cores"])
    if busy > CONTENDED_CORES:
        out.append(f"machine: up to {busy:.2f} cores of other work beside a trial")
    return out


def gate(claims: pl.DataFrame, cells: pl.DataFrame) -> pl.DataFrame:
    """claims rows with like_for_like and unlike (the failed checks, '; '-joined); a row that
    compares two configurations and fails a check has them named after its text. Rows about one
    configuration (scales) are like for like by construction. cells: facts()."""
    if claims.is_empty():
        return claims.with_columns(like_for_like=pl.lit(None, pl.Boolean), unlike=pl.lit(None, pl.String))
    index = {(r["model"], r["workload"], r["config"], r["concurrency"]): r for r in cells.iter_rows(named=True)}
    like, unlike, texts = [], [], []
    for r in claims.iter_rows(named=True):
        fa = index.get((r["model"], r["workload"], r["a"], r["users"]))
        fb = index.get((r["model"], r["workload"], r["b"], r["users_b"]))
        checks = failed(fa, fb) if fa and fb and r["a"] != r["b"] else []
        like.append(not checks if fa and fb else None)
        unlike.append("; ".join(checks) or None)
        text = r["text"] + flag(checks)
        qa, qb = r["a"].split(" · ")[-1], (r["b"] or "").split(" · ")[-1]
        if fa and fb and fa["sha256"] == fb["sha256"] and qa != qb:  # one file, one side converted it
            text += f" Both serve one weights file, {plain(qa if qb in CONVERTED else qb)} converted to " \
                    f"{plain(qb if qb in CONVERTED else qa)}."
        texts.append(text)
    return claims.with_columns(like_for_like=pl.Series(like, dtype=pl.Boolean), unlike=pl.Series(unlike, dtype=pl.String),
                               text=pl.Series(texts, dtype=pl.String))


def note(cells: pl.DataFrame, model: str, workload: str, a: str, b: str, users: int) -> str:
    """' *Not like for like:* ...' for two configurations at one level that fail a check, else ''."""
    index = {(r["config"], r["concurrency"]): r for r in
             cells.filter((pl.col("model") == model) & (pl.col("workload") == workload)).iter_rows(named=True)}
    fa, fb = index.get((a, users)), index.get((b, users))
    return flag(failed(fa, fb) if fa and fb and a != b else [])


def flag(checks: list[str]) -> str:
    """The words a sentence ends with when its pair failed checks: ' *Not like for like:* ...'."""
    return f" *Not like for like:* {plain('; '.join(checks))}." if checks else ""

