"""The workloads page's frames: open-loop rate sweeps (keeping up, the knee, goodput within the
scenario's SLO), and pairs of servers that differ in one switch (prefix cache, chunked prefill)
on the workload meant to show it. Every figure is a mean over trials with its 95% interval
(stats.py), and a claim is printed only where that interval supports it.

Definitions (per trial, from its measured requests):
- offered_rps: the rate the schedule actually drew, (n-1) / (last due - first due);
- achieved_rps: the rate answers came back, (n-1) / (last end - first end) over answered
  requests. A server that keeps up returns answers as fast as they arrive; an overloaded
  one returns them at its own pace while its queue grows, so keep_up = achieved / offered
  falls below 1. A rate is *sustained* when keep_up's interval lies above KEEP_UP;
- lag_p99_ms: p99 of sent - due. Above the scenario's load.max_lag_ms the client, not the
  server, set the pace, and the cell is flagged;
- goodput: requests (and their output tokens) within every SLO objective's max_ms, per
  second of the trial's span (vLLM's benchmark counts goodput the same way); slo_met: each
  objective's percentile over the trial within its max_ms.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import polars as pl

from gaplab.analysis import metrics, stats
from gaplab.report import speed
from gaplab.report.claims import COLUMNS, _fmt, _ratio_text, compare, users_text
from gaplab.report.markup import plain
from gaplab.spec.load import SLO_METRICS, SLO_PERCENTILES
from gaplab.storage import run_record, store

KEEP_UP = 0.9
# the per-request column each SLO metric reads
SLO_COLUMN = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2e": "e2e_ms"}
PERCENTILE_COLUMNS = [f"{m}_p{p}_ms" for m in SLO_METRICS for p in SLO_PERCENTILES]
METRICS = (["aggregate_tok_s", "offered_rps", "achieved_rps", "keep_up", "goodput_rps", "goodput_tok_s",
            "lag_p99_ms", "short_ttft_p50_ms", "short_ttft_p99_ms", "short_gap_p99_ms", "long_ttft_p50_ms",
            "prompt_seen", "prompt_computed", "prefix_hit_pct"] + PERCENTILE_COLUMNS)
HIGHER_IS_BETTER = {"aggregate_tok_s": True, "goodput_rps": True, "goodput_tok_s": True,
                    **{m: False for m in METRICS if m.endswith("_ms")}}
UNITS = {"ttft_p50_ms": "median TTFT", "ttft_p90_ms": "p90 TTFT", "aggregate_tok_s": "output tok/s (all users)",
         "short_ttft_p50_ms": "short requests' median TTFT", "short_ttft_p99_ms": "short requests' p99 TTFT",
         "short_gap_p99_ms": "short requests' p99 longest stall between tokens", "e2e_p50_ms": "median E2E",
         "long_ttft_p50_ms": "long requests' median TTFT"}
# what each workload kind's switch pairs are compared on, in the page's order
COMPARED = {"shared-prefix": ("ttft_p50_ms", "aggregate_tok_s"),
            "long-prompt-mix": ("short_ttft_p50_ms", "short_gap_p99_ms", "long_ttft_p50_ms")}


def run_settings(raw_dir: Path) -> pl.DataFrame:
    """Per run: its SLO objectives, lag bound and launch flags (storage.run_record's typed columns)."""
    return run_record.settings(store.read_table(raw_dir, "run")).select("run_id", "slo", "max_lag_ms", "flags")


def _within_slo(slo: list[dict]) -> pl.Expr:
    good = pl.col("ok")
    for o in slo:
        good = good & (pl.col(SLO_COLUMN[o["metric"]]) <= o["max_ms"]).fill_null(False)
    return good


def trials(requests: pl.DataFrame, settings: pl.DataFrame) -> pl.DataFrame:
    """One row per trial of the workloads study (requests: speed.measured_requests(study='workloads'))."""
    if requests.is_empty():
        return pl.DataFrame()
    req = requests.join(settings, on="run_id", how="left")
    parts = []
    for (slo,), g in req.group_by("slo"):
        parts.append(g.with_columns(good=_within_slo(slo or [])))
    req = pl.concat(parts, how="diagonal_relaxed")
    ok, short, long = pl.col("ok"), pl.col("tag") == "short", pl.col("tag") == "long"
    n = pl.len()
    per = req.group_by("run_id", "slo", "max_lag_ms", "flags", "workload_kind").agg(
        offered_rps=(n - 1) / ((pl.col("scheduled_ns").max() - pl.col("scheduled_ns").min()) / 1e9),
        achieved_rps=(ok.sum() - 1) / ((pl.col("end_ns").filter(ok).max() - pl.col("end_ns").filter(ok).min()) / 1e9),
        good_requests=pl.col("good").sum(),
        good_tokens=pl.col("completion_tokens").filter(pl.col("good")).sum(),
        short_ttft_p50_ms=pl.col("ttft_ms").filter(ok & short).median(),
        short_ttft_p99_ms=pl.col("ttft_ms").filter(ok & short).quantile(0.99, interpolation="linear"),
        short_gap_p99_ms=pl.col("max_gap_ms").filter(ok & short).quantile(0.99, interpolation="linear"),
        long_ttft_p50_ms=pl.col("ttft_ms").filter(ok & long).median(),
        # what the server says it saw and computed, against what gaplab aimed for
        prompt_seen=pl.col("prompt_tokens").filter(ok).sum() / pl.col("target_prompt_tokens").filter(ok).sum(),
        # null where the server does not say (vLLM), not 0
        prompt_computed=pl.when(pl.col("server_prompt_n").filter(ok).count() > 0).then(
            pl.col("server_prompt_n").filter(ok).sum()
            / pl.col("prompt_tokens").filter(ok & pl.col("server_prompt_n").is_not_null()).sum()),
        **{f"{m}_p{p}_ms": pl.col(SLO_COLUMN[m]).filter(ok).quantile(p / 100, interpolation="linear")
           for m in SLO_METRICS for p in SLO_PERCENTILES},
    )
    base = metrics.trial_summary(req)
    # a pace against a schedule exists only where there was one: open-loop (rate) trials; a
    # closed loop's figure would also widen the spread pooled over the runtime's rate cells
    open_loop = pl.col("rate").is_not_null()
    out = base.join(per, on="run_id", how="left").with_columns(
        offered_rps=pl.when(open_loop).then(pl.col("offered_rps")),
        achieved_rps=pl.when(open_loop).then(pl.col("achieved_rps")),
    ).with_columns(
        keep_up=pl.col("achieved_rps") / pl.col("offered_rps"),
        goodput_rps=pl.col("good_requests") / pl.col("span_s"),
        goodput_tok_s=pl.col("good_tokens") / pl.col("span_s"),
        lag_p99_ms=pl.col("queue_p99_ms"),
    )
    return out.with_columns(lagged=pl.col("lag_p99_ms") > pl.col("max_lag_ms"))


def with_prefix_hits(raw_dir: Path, trial_rows: pl.DataFrame) -> pl.DataFrame:
    """trial_rows with prefix_hit_pct: the share of prompt tokens the server's prefix cache served in
    the trial, by the server's own account: its counters where it keeps them (vLLM's, SGLang's:
    decompose.SERVER_METRICS), else its per-request counts of the prompt tokens it computed against
    those it saw (llama.cpp's prompt_n, Ollama's prompt_eval_count: prompt_computed). Null where the
    server says neither."""
    from gaplab.report import decompose

    if trial_rows.is_empty():
        return trial_rows
    engines = decompose.engines(raw_dir, trial_rows["run_id"].to_list())
    counted = [pl.DataFrame(schema={"run_id": pl.String, "counted_pct": pl.Float64})]
    for (engine,), g in engines.group_by("engine"):
        if engine in decompose.SERVER_METRICS:
            means = decompose.server_means(raw_dir, g["run_id"].to_list(), engine)
            if "srv_prefix_hit_pct" in means.columns:
                # no queries counted (the cache off): no share, rather than 0/0
                counted.append(means.select("run_id", counted_pct=pl.col("srv_prefix_hit_pct").cast(pl.Float64)
                                            .fill_nan(None)))
    return (trial_rows.join(pl.concat(counted), on="run_id", how="left")
            .with_columns(prefix_hit_pct=pl.coalesce("counted_pct", (1 - pl.col("prompt_computed")) * 100))
            .drop("counted_pct"))


def estimates(trial_rows: pl.DataFrame) -> pl.DataFrame:
    """One row per cell: every METRICS figure with its interval, and the verdicts the page prints:
    sustained (keep_up's interval above KEEP_UP; 'overloaded' below; else 'undecided'), slo
    ('met' when every objective's percentile interval is within max_ms, 'missed' when one lies
    above, else 'undecided'), lagged (a trial's client fell behind its schedule)."""
    if trial_rows.is_empty():
        return pl.DataFrame()
    est = speed.estimates(trial_rows, metrics=[m for m in METRICS if m in trial_rows.columns])
    extra = trial_rows.group_by("cell_key").agg(pl.col("slo").last(), pl.col("flags").last(),
                                                pl.col("workload_kind").last(), pl.col("lagged").any())
    est = est.join(extra, on="cell_key", how="left")
    rows = []
    for r in est.iter_rows(named=True):
        keep = _against(r.get("keep_up_lo"), r.get("keep_up_hi"), KEEP_UP)
        r["sustained"] = (None if r["rate"] is None else
                          {"above": "sustained", "below": "overloaded"}.get(keep, keep))
        verdicts = []
        for o in r["slo"] or []:
            col = f"{o['metric']}_p{o['percentile']:g}_ms"
            side = _against(r.get(f"{col}_lo"), r.get(f"{col}_hi"), o["max_ms"])
            verdicts.append({"above": "missed", "below": "met"}.get(side, side))
        r["slo_verdict"] = (None if not verdicts else "missed" if "missed" in verdicts
                            else "met" if all(v == "met" for v in verdicts) else "undecided")
        rows.append(r)
    return pl.DataFrame(rows, infer_schema_length=None)


def _against(lo, hi, bound) -> str:
    """Where a 95% interval lies against a bound: 'above', 'below', 'undecided' (it holds the
    bound) or 'no interval' (one trial)."""
    if lo is None or hi is None:
        return "no interval"
    return "above" if lo > bound else "below" if hi <= bound else "undecided"


def knee(est: pl.DataFrame) -> pl.DataFrame:
    """Per runtime (and model, quant, workload) of the rate cells: the highest rate sustained with
    every lower rate sustained too, and the highest of those within the SLO, with its goodput."""
    if est.is_empty() or "rate" not in est.columns:
        return pl.DataFrame()
    rates = est.filter(pl.col("rate").is_not_null())
    rows = []
    for key, g in rates.sort("rate").group_by(["model", "workload", "runtime", "quant"], maintain_order=True):
        best = within = None
        for r in g.iter_rows(named=True):
            if r["sustained"] != "sustained":
                break
            best = r
            if r["slo_verdict"] == "met":
                within = r
        rows.append(dict(zip(["model", "workload", "runtime", "quant"], key),
                         max_sustained_rps=best["rate"] if best else None,
                         slo_rps=within["rate"] if within else None,
                         goodput_rps=within["goodput_rps"] if within else None,
                         goodput_rps_lo=within["goodput_rps_lo"] if within else None,
                         goodput_rps_hi=within["goodput_rps_hi"] if within else None,
                         rates=", ".join(f"{x:g}" for x in g["rate"].to_list())))
    return pl.DataFrame(rows, infer_schema_length=None)


def _flag_difference(a: list[dict], b: list[dict]) -> str:
    """How two cells' launch flags differ, in Markdown words (a's side)."""
    fa, fb = run_record.flag_values(a), run_record.flag_values(b)
    words = []
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            va = fa.get(k, True if k in ("prefix_cache", "chunked_prefill") else None)
            words.append(f"{k.replace('_', ' ')} {'on' if va is True else 'off' if va is False else plain(va or 'default')}")
    return "; ".join(words)


def _change_text(row: dict) -> str:
    """What a switch row says in words: the better side, and how far its figure is from the
    other's in percent, with the ratio's 95% interval carried over."""
    if row["verdict"] == "no interval":
        return "one trial on a side, no verdict"
    if row["verdict"] not in stats.DIRECTIONS:  # undecided, or the same within the margin
        return row["verdict"]
    a_better = row["verdict"] == "A better"
    better, worse = (row["a"], row["b"]) if a_better else (row["b"], row["a"])
    # the better side's figure over the worse side's, and its interval
    r, lo, hi = ((row["ratio"], row["ratio_lo"], row["ratio_hi"]) if a_better else
                 (1 / row["ratio"], 1 / row["ratio_hi"], 1 / row["ratio_lo"]))
    ends = sorted(abs(x - 1) * 100 for x in (lo, hi))
    return (f"**{plain(better)}** is better, {abs(r - 1) * 100:.0f}% [{ends[0]:.0f}–{ends[1]:.0f}%] "
            f"{'lower' if r < 1 else 'higher'} than {plain(worse)}")


def switch_rows(trial_rows: pl.DataFrame) -> list[dict]:
    """The 'switch' claims rows (claims.COLUMNS): two servers of one kind that differ only in
    launch flags, on their workload's COMPARED metrics at one level; a is the switch's on side."""
    rows = []
    pools = stats.runtime_pools(trial_rows, [m for m in METRICS if m in trial_rows.columns])
    cells = trial_rows.group_by(["machine_id", "model", "quant", "workload", "workload_kind", "runtime_kind",
                                 "concurrency", "runtime", "flags"], maintain_order=True).agg(pl.all())
    for key, g in cells.group_by(["machine_id", "model", "quant", "workload", "workload_kind", "runtime_kind",
                                  "concurrency"], maintain_order=True):
        machine, model, quant, workload, kind, _, users = key
        for a, b in itertools.combinations(g.sort("runtime").iter_rows(named=True), 2):
            if a["concurrency"] is None:
                continue
            # the switch's "on" side is a: the runtime's defaults (fewer flags set) first
            if len(a["flags"]) > len(b["flags"]):
                a, b = b, a
            for m in COMPARED.get(kind, ()):
                va, vb = a[m], b[m]
                if not [v for v in va if v is not None] or not [v for v in vb if v is not None]:
                    continue
                pa, pb = pools.get((machine, a["runtime"], m)), pools.get((machine, b["runtime"], m))
                row = compare("switch", model, workload, m, a["runtime"], b["runtime"], users, users, va, vb, pa, pb,
                              HIGHER_IS_BETTER[m])
                row["claim_id"] = f"switch|{model}|{workload}|{m}|{a['runtime']} · {quant}|{b['runtime']} · {quant}|{users}"
                what = _flag_difference(b["flags"], a["flags"])
                row["text"] = (f"{plain(workload)}, {users_text(users)}, {UNITS.get(m, m)}: {plain(a['runtime'])} "
                               f"{_fmt(row['value_a'])}{' ms' if m.endswith('_ms') else ''} against {plain(b['runtime'])} "
                               f"({what}) "
                               f"{_fmt(row['value_b'])}, {_ratio_text(row)}: {_change_text(row)}.")
                rows.append(row)
    return rows


def claims(trial_rows: pl.DataFrame, est: pl.DataFrame) -> pl.DataFrame:
    """Claims rows (claims.COLUMNS) of the workloads study: 'switch' rows (switch_rows), and
    'sustains', the highest rate each runtime sustains within the SLO."""
    if trial_rows.is_empty():
        return pl.DataFrame(schema={c: pl.String for c in COLUMNS})
    rows = switch_rows(trial_rows)
    stated = est.filter(pl.col("rate").is_not_null() & (pl.col("slo").list.len() > 0)) if "rate" in est.columns else est
    for r in knee(stated).iter_rows(named=True):  # without objectives there is no SLO to sustain a rate within
        rate = r["slo_rps"]
        text = (f"{plain(r['runtime'])} sustains {rate:g} req/s within the SLO on {plain(r['workload'])} (goodput "
                f"{r['goodput_rps']:.2f} req/s [{r['goodput_rps_lo'] or float('nan'):.2f}–{r['goodput_rps_hi'] or float('nan'):.2f}])"
                if rate is not None else
                f"{plain(r['runtime'])}: no rate tried on {plain(r['workload'])} ({r['rates']} req/s) is both sustained, "
                "with every "
                f"lower rate, and within the SLO")
        rows.append({"claim_id": f"sustains|{r['model']}|{r['workload']}|slo|{r['runtime']} · {r['quant']}||",
                     "kind": "sustains",
                     "model": r["model"], "workload": r["workload"], "metric": "goodput_rps", "users": None,
                     "users_b": None, "a": r["runtime"], "b": None, "across_kinds": False, "value_a": rate,
                     "value_b": r["max_sustained_rps"], "ratio": None, "ratio_lo": None, "ratio_hi": None,
                     "interval_method": None, "trials_a": None, "trials_b": None, "verdict": "within SLO" if rate is not None else "none",
                     "statement": f"{rate:g}" if rate is not None else "none", "text": text + "."})
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in COLUMNS})
    return pl.DataFrame(rows, infer_schema_length=None).select(COLUMNS)



def switch_claims(claim_rows: pl.DataFrame, est: pl.DataFrame, kind: str) -> pl.DataFrame:
    """The switch claims of the workloads of one kind (shared-prefix, long-prompt-mix)."""
    if est.is_empty() or claim_rows.is_empty():
        return claim_rows.clear()
    names = est.filter(pl.col("workload_kind") == kind)["workload"].unique().to_list()
    return claim_rows.filter(pl.col("kind") == "switch", pl.col("workload").is_in(names))

def sweep_panels(est: pl.DataFrame) -> pl.DataFrame:
    """The rate cells as a long frame for charts.rate_sweep: one row per cell and figure (keep-up,
    each SLO objective's percentile, goodput), with its interval, bound and verdict."""
    rates = est.filter(pl.col("rate").is_not_null()) if "rate" in est.columns else pl.DataFrame()
    rows = []
    for r in rates.iter_rows(named=True):
        figures: list[tuple[str, str, float | None, str | None]] = [("keep-up (answers ÷ arrivals)", "keep_up", KEEP_UP, r["sustained"])]
        for o in r["slo"] or []:
            figures.append((f"{o['metric'].upper()} p{o['percentile']:g} (ms)", f"{o['metric']}_p{o['percentile']:g}_ms",
                            o["max_ms"], _against(r.get(f"{o['metric']}_p{o['percentile']:g}_ms_lo"),
                                                  r.get(f"{o['metric']}_p{o['percentile']:g}_ms_hi"), o["max_ms"])))
        figures.append(("goodput (req/s within the SLO)" if r["slo"] else
                        "goodput (req/s answered; no SLO stated)", "goodput_rps", None, r["slo_verdict"]))
        for panel, m, bound, verdict in figures:
            lo, hi = r.get(f"{m}_lo"), r.get(f"{m}_hi")
            rows.append({"runtime": r["runtime"], "model": r["model"], "workload": r["workload"], "rate": r["rate"],
                         "panel": panel, "value": r[m], "lo": lo, "hi": hi, "bound": bound,
                         "interval": "1 trial, no interval" if lo is None else f"{lo:,.2f} – {hi:,.2f}",
                         "verdict": {"above": "above the bound", "below": "within the bound"}.get(verdict or "", verdict),
                         "trials": r["trials"], "run_ids": r["run_ids"]})
    return pl.DataFrame(rows, schema={"runtime": pl.String, "model": pl.String, "workload": pl.String,
                                      "rate": pl.Float64, "panel": pl.String, "value": pl.Float64, "lo": pl.Float64,
                                      "hi": pl.Float64, "bound": pl.Float64, "interval": pl.String,
                                      "verdict": pl.String, "trials": pl.Int64, "run_ids": pl.String})
