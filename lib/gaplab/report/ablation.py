"""A gap apportioned to its causes, one factor at a time.

An ablation (ablation_spec.Ablation, stored in each run's meta_json) names configuration a, b,
and per factor the configuration that is a with only that factor as in b. On the log scale of
the metric, the gap is G = L(b) - L(a), where L is the mean log value over a cell's trials;
each factor's effect is E_f = L(a with f) - L(a), measured from a alone; what the factors do
together beyond their separate effects is the remainder R = G - sum of E_f (an interaction, or
a factor the list missed). Each is a linear contrast of cell means, so its 95% interval is a
t interval with the contrast's standard error (each cell's spread over its trials, or its
runtime's pooled one where larger, as every interval here: stats.py) and Welch-Satterthwaite
degrees of freedom. A step's share of the gap is E_f / G, with a delta-
method interval; it is given only where G's own interval excludes zero.

Rows come out in claims.COLUMNS form (kind "ablation"), so the sentences render from them.
"""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
from scipy import stats as st

from gaplab.analysis import stats
from gaplab.analysis.metrics import HIGHER_IS_BETTER, selected_runs
from gaplab.analysis.stats import LEVEL
from gaplab.report.claims import COLUMNS, UNITS, users_text
from gaplab.report.markup import plain
from gaplab.storage import store


def specs(raw_dir, machine_id: str) -> list[dict]:
    """The ablations the machine's newest runs were measured under, by name."""
    runs = selected_runs(store.read_table(raw_dir, "run"), None).filter(pl.col("machine_id") == machine_id)
    found: dict[str, dict] = {}
    for meta in runs.sort("run_id", descending=True)["meta_json"].drop_nulls().to_list():
        for a in json.loads(meta).get("ablations") or []:
            found.setdefault(a["name"], a)
    return list(found.values())


def _cell(trials: pl.DataFrame, spec: dict, config: str) -> np.ndarray:
    rows = trials.filter((pl.col("config") == config) & (pl.col("model") == spec["model"])
                         & (pl.col("workload") == spec["workload"]) & (pl.col("concurrency") == spec["users"]))
    values = np.asarray([v for v in rows[spec["metric"]].to_list() if v is not None and v > 0], dtype=float)
    return np.log(values)


def _contrast(cells: list[tuple[float, np.ndarray, stats.Pool | None]]) -> tuple[float, float, float]:
    """(estimate, half-width of its 95% interval, standard error) of sum c * mean(logs), each
    cell's spread its own or its runtime's pooled one, whichever is larger (stats.spread)."""
    est = sum(c * logs.mean() for c, logs, _ in cells)
    parts = []
    for c, logs, pooled in cells:
        sd, df = stats.spread(logs, pooled)
        parts.append((c * c * sd * sd / logs.size, df))
    se2 = sum(v for v, _ in parts)
    if se2 == 0:
        return est, 0.0, 0.0
    df = se2 ** 2 / sum(v * v / d for v, d in parts if v > 0)
    se = math.sqrt(se2)
    return est, float(st.t.ppf(0.5 + LEVEL / 2, df)) * se, se


def apportion(trials: pl.DataFrame, spec: dict) -> tuple[pl.DataFrame, str]:
    """The gap's steps: one row per factor, the remainder and the whole gap (step, config, ratio
    with lo/hi, share_pct with lo/hi); and why not, where a configuration lacks two trials."""
    chain = spec["chain"]
    logs = {role: _cell(trials, spec, config) for role, config in chain.items()}
    short = [chain[r] for r, v in logs.items() if v.size < 2]
    if short:
        return pl.DataFrame(), f"{', '.join(short)} measured in fewer than two trials at {users_text(spec['users'])}"
    factors = [r for r in chain if r.startswith("factor:")]
    pools = stats.runtime_pools(trials, [spec["metric"]])
    machine = trials["machine_id"][0] if "machine_id" in trials.columns else None
    cell = {r: (logs[r], pools.get((machine, chain[r].split(" · ")[0], spec["metric"]))) for r in chain}
    gap = _contrast([(1, *cell["b"]), (-1, *cell["a"])])
    steps = {r.removeprefix("factor:"): _contrast([(1, *cell[r]), (-1, *cell["a"])]) for r in factors}
    steps["remainder"] = _contrast([(1, *cell["b"])] + [(-1, *cell[r]) for r in factors]
                                   + [(len(factors) - 1, *cell["a"])])
    # for the shares' delta method: a step and the gap share a's cell (the remainder b's too)
    va, vb = (stats.spread(*cell[r])[0] ** 2 / logs[r].size for r in ("a", "b"))
    rows = []
    for name, (est, half, se) in [*steps.items(), ("the whole gap", gap)]:
        row = {"step": name, "config": chain.get(f"factor:{name}", chain["b"] if name != "remainder" else ""),
               "ratio": math.exp(est), "ratio_lo": math.exp(est - half), "ratio_hi": math.exp(est + half),
               "share_pct": None, "share_lo": None, "share_hi": None}
        if gap[0] and abs(gap[0]) > gap[1] and name != "the whole gap":  # a gap to apportion
            share = est / gap[0]
            cov = va if name != "remainder" else vb - (len(factors) - 1) * va
            h = float(st.norm.ppf(0.5 + LEVEL / 2)) * math.sqrt(
                max(se ** 2 - 2 * share * cov + share ** 2 * gap[2] ** 2, 0.0)) / abs(gap[0])
            row.update(share_pct=100 * share, share_lo=100 * (share - h), share_hi=100 * (share + h))
        rows.append(row)
    return pl.DataFrame(rows), ""


def claim_rows(spec: dict, steps: pl.DataFrame) -> pl.DataFrame:
    """The ablation as claims rows (claims.COLUMNS, kind 'ablation'): each step's ratio with its
    interval, and its sentence."""
    if steps.is_empty():
        return pl.DataFrame(schema={c: pl.String for c in COLUMNS})
    metric, chain = spec["metric"], spec["chain"]
    better = HIGHER_IS_BETTER[metric]
    out = []
    for r in steps.iter_rows(named=True):
        lo, hi = r["ratio_lo"], r["ratio_hi"]
        verdict = ("undecided" if lo <= 1 <= hi else
                   "A better" if (lo > 1) == better else "B better")
        what = (f"the whole gap, {plain(chain['a'])} to {plain(chain['b'])}" if r["step"] == "the whole gap" else
                "the remainder (the factors together, beyond their separate effects)" if r["step"] == "remainder"
                else f"{plain(r['step'])} alone ({plain(chain['a'])} to {plain(r['config'])})")
        share = (f", {r['share_pct']:.0f}% [{r['share_lo']:.0f}–{r['share_hi']:.0f}%] of the gap"
                 if r["share_pct"] is not None else "")
        moves = "no change the interval resolves" if verdict == "undecided" else (
            f"{'raises' if r['ratio'] > 1 else 'lowers'} {UNITS.get(metric, metric)}")
        text = (f"{plain(spec['model'])}, {users_text(spec['users'])}: {what} ×{r['ratio']:.2f} "
                f"[{lo:.2f}–{hi:.2f}]{share}: {moves}.")
        out.append({"claim_id": f"ablation|{spec['model']}|{spec['workload']}|{metric}|{chain['a']}|"
                                f"{r['config'] or 'remainder'}|{spec['users']}|{r['step']}",
                    "kind": "ablation", "model": spec["model"], "workload": spec["workload"], "metric": metric,
                    "users": spec["users"], "users_b": spec["users"], "a": chain["a"], "b": r["config"] or None,
                    "across_kinds": None, "value_a": None, "value_b": None, "ratio": r["ratio"], "ratio_lo": lo,
                    "ratio_hi": hi, "interval_method": "unpaired", "trials_a": None, "trials_b": None,
                    "verdict": verdict, "statement": verdict, "text": text})
    return pl.DataFrame(out, infer_schema_length=None).select(COLUMNS)


def story(spec: dict, rows: pl.DataFrame, why: str) -> str:
    """The ablation's sentences, from its claims rows."""
    head = (f"**{plain(spec['name'])}**: {UNITS.get(spec['metric'], spec['metric'])} of {plain(spec['chain']['a'])} "
            f"against {plain(spec['chain']['b'])}, one factor at a time.")
    if rows.is_empty():
        return f"{head} Not apportioned: {why}."
    return head + "\n\n" + "\n".join(f"- {t}" for t in rows["text"].to_list())


def waterfall_frame(spec: dict, steps: pl.DataFrame) -> pl.DataFrame:
    """The steps as bars from a's value: each step's start and end (in the metric's unit, from a's
    geometric mean) with the end's interval, for charts.ablation_waterfall."""
    rows, level = [], 1.0
    for r in steps.filter(pl.col("step") != "the whole gap").iter_rows(named=True):
        start, end = level, level * r["ratio"]
        rows.append({"step": r["step"], "start": start, "end": end, "lo": level * r["ratio_lo"],
                     "hi": level * r["ratio_hi"]})
        level = end
    whole = steps.filter(pl.col("step") == "the whole gap").row(0, named=True)
    rows.append({"step": "the whole gap", "start": 1.0, "end": whole["ratio"], "lo": whole["ratio_lo"],
                 "hi": whole["ratio_hi"]})
    return pl.DataFrame(rows).with_columns(order=pl.int_range(pl.len()))
