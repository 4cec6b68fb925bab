"""The workloads page's sentences, rendered from its frames (workloads.estimates, knee, claims):
every number printed comes with its 95% interval, and a direction is stated only where the
interval supports it."""

from __future__ import annotations

import polars as pl

from gaplab.report import charts
from gaplab.report import claims as claims_mod
from gaplab.report.markup import code, plain
from gaplab.report.workloads import KEEP_UP, switch_claims

NOTHING = ("Nothing of this study is measured on this machine yet: `gaplab sweep scenarios/workloads-cpu.yaml` "
           "(run by `make report`) measures it.")

VERDICT_WORDS = {"no interval": "one trial, no verdict", "undecided": "undecided (the interval holds the bound)"}


def _slo_text(objectives: list[dict] | None) -> str:
    return " and ".join(f"{plain(o['metric'].upper())} p{o['percentile']:g} ≤ {o['max_ms']:,.0f} ms"
                        for o in objectives or []) or "none"


def sweep_story(est: pl.DataFrame, knee_rows: pl.DataFrame) -> str:
    """Per runtime of the rate cells: which rates it kept up with, the knee, and the SLO."""
    rates = est.filter(pl.col("rate").is_not_null()) if not est.is_empty() else est
    if rates.is_empty():
        return NOTHING if est.is_empty() else "No open-loop rates (`load.rates`) in this study's runs."
    lines = [f"The SLO: {_slo_text(rates['slo'].to_list()[0])}. A rate is *sustained* when keep-up's interval lies above "
             f"{KEEP_UP:g} (answers come back at least {KEEP_UP:.0%} as fast as requests arrive), *overloaded* when "
             "it lies below, and undecided otherwise.", ""]
    keep_up_text = charts.with_intervals(rates, ["keep_up"], digits=2)["keep_up"]
    rates = rates.with_columns(keep_up_text=keep_up_text)
    for (runtime, workload), g in rates.sort("rate").group_by(["runtime", "workload"], maintain_order=True):
        cells = "; ".join(f"{r['rate']:g} req/s {VERDICT_WORDS.get(r['sustained'], r['sustained'])} (keep-up {r['keep_up_text']}, "
                          f"SLO {VERDICT_WORDS.get(r['slo_verdict'], r['slo_verdict'] or 'not stated')})" for r in g.iter_rows(named=True))
        lines.append(f"- **{plain(runtime)}**, {plain(workload)}: {cells}.")
    lines.append("")
    for r in knee_rows.iter_rows(named=True):
        if r["max_sustained_rps"] is None:
            lowest = rates.filter(pl.col("runtime") == r["runtime"], pl.col("workload") == r["workload"]).sort("rate").row(0, named=True)
            lines.append(f"- {plain(r['runtime'])}: no knee, since its lowest rate ({lowest['rate']:g} req/s) is "
                         f"{VERDICT_WORDS.get(lowest['sustained'], lowest['sustained'])}; a rate counts as sustained "
                         "only with every lower rate sustained too.")
        else:
            lines.append(f"- {plain(r['runtime'])}'s knee: the highest rate it sustained, every lower one too, is "
                         f"{r['max_sustained_rps']:g} req/s.")
    return "\n".join(lines)


def lag_story(est: pl.DataFrame) -> str:
    """Whether the client kept to its schedule (no coordinated omission) in every rate cell."""
    rates = est.filter(pl.col("rate").is_not_null()) if not est.is_empty() else est
    if rates.is_empty():
        return ""
    worst = rates.sort("lag_p99_ms", descending=True).row(0, named=True)
    lagged = rates.filter(pl.col("lagged"))
    head = (f"The client sent each request when its schedule said: the p99 of (sent − due) was at most "
            f"{worst['lag_p99_ms']:.1f} ms (mean of trials, {plain(worst['runtime'])} at {worst['rate']:g} req/s).")
    if lagged.is_empty():
        return head + " No trial passed the scenario's bound (`load.max_lag_ms`)."
    names = ", ".join(f"{plain(r['runtime'])} at {r['rate']:g} req/s" for r in lagged.iter_rows(named=True))
    return head + f" Flagged, a trial's client fell behind its bound: {names}; read their latencies with care."


def switch_story(claim_rows: pl.DataFrame, est: pl.DataFrame, kind: str) -> str:
    """The switch claims of the workloads of one kind, as bullets."""
    if est.is_empty():
        return NOTHING
    rows = switch_claims(claim_rows, est, kind)
    if rows.is_empty():
        return f"No pair of servers differing in one switch has measured a {code(kind)} workload here."
    return claims_mod.render(rows, "switch")


def prefix_hits(est: pl.DataFrame) -> pl.DataFrame:
    """The shared-prefix cells: the share of prompt tokens each server's cache served, by its own
    count (workloads.with_prefix_hits), beside the median TTFT the client measured."""
    if est.is_empty() or "prefix_hit_pct" not in est.columns:
        return pl.DataFrame()
    cells = est.filter(pl.col("workload_kind") == "shared-prefix")
    return charts.with_intervals(cells, ["prefix_hit_pct", "ttft_p50_ms"], digits=1).select(
        "runtime", "workload", "concurrency", "trials", "prefix_hit_pct", "ttft_p50_ms").sort("workload", "runtime")


def token_check(est: pl.DataFrame) -> pl.DataFrame:
    """Per cell: the prompt tokens the server counted over those gaplab aimed for, and the share
    of them it computed (llama.cpp's prompt_n; the rest came from its cache)."""
    if est.is_empty():
        return pl.DataFrame()
    cols: list[str] = [m for m in ("prompt_seen", "prompt_computed", "prefix_hit_pct") if m in est.columns]
    return charts.with_intervals(est, cols, digits=2).select(
        "runtime", "workload", pl.coalesce(pl.col("rate").cast(pl.String) + " req/s",
                                           pl.col("concurrency").cast(pl.String) + " users").alias("load"),
        "trials", *cols).sort("workload", "runtime", "load")
