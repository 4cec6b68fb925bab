"""The throughput and latency page's sentences, rendered from the claims table (claims.py)
and the per-cell estimates (analysis.estimates): no comparison is written here that is
not a claim row first, and each carries its interval."""

from __future__ import annotations

import polars as pl

from gaplab import claims as cl


def _iv(row: dict, m: str, digits: int = 1) -> str:
    if row.get(f"{m}_lo") is None:
        return f"{row[m]:.{digits}f} (1 trial)"
    return f"{row[m]:.{digits}f} [{row[f'{m}_lo']:.{digits}f}–{row[f'{m}_hi']:.{digits}f}]"


def throughput_story(claims: pl.DataFrame, estimates: pl.DataFrame) -> str:
    """Per model: the comparisons at the most users, flips and overtakes, and how each scales."""
    if estimates.is_empty():
        return "No measured cells yet: run `make report` or `gaplab sweep`."
    hi = int(estimates["concurrency"].max())
    out = []
    for model in estimates["model"].unique(maintain_order=True).to_list():
        parts = [f"**{model}**, total output tok/s:",
                 cl.render(claims, "faster", "aggregate_tok_s", model, users=hi),
                 cl.render(claims, "flips", "aggregate_tok_s", model),
                 cl.render(claims, "overtakes", "aggregate_tok_s", model),
                 cl.render(claims, "scales", "aggregate_tok_s", model)]
        out.append("\n".join(p for p in parts if p))
    return "\n\n".join(out) + ("\n\nA ranking, flip or crossing is stated only where the 95% interval of the "
                               "ratio excludes 1 at every level it relies on; elsewhere the page says the "
                               "difference is within noise and gives the interval.")


def per_user_story(estimates: pl.DataFrame) -> str:
    """How much decode speed one user keeps as others join, with intervals."""
    if estimates.is_empty():
        return ""
    lo = int(estimates["concurrency"].min())
    out = []
    for key, cell in estimates.group_by(["model", "runtime", "quant"], maintain_order=True):
        cell = cell.sort("concurrency")
        first = cell.row(0, named=True)
        if first["concurrency"] != lo or first["per_user_tok_s"] is None:
            continue
        steps = [f"{_iv(r, 'per_user_tok_s')} at {r['concurrency']} ({r['per_user_tok_s'] / first['per_user_tok_s']:.0%})"
                 for r in cell.iter_rows(named=True) if r["concurrency"] > lo and r["per_user_tok_s"] is not None]
        out.append(f"- {key[0]} {key[2]} on {key[1]}: {_iv(first, 'per_user_tok_s')} tok/s per user alone; "
                   + "; ".join(steps) + ".")
    return ("Decode speed seen by one user once its first token arrived (95% interval over trials). Where the "
            "server has a slot for every user, all of them advance in the same steps, so the drop shows what "
            "one shared step costs against a lone user's.\n\n" + "\n".join(out))


def ttft_story(claims: pl.DataFrame, estimates: pl.DataFrame) -> str:
    """Waiting for the first token: how it grows with users (scales claims on median TTFT) and
    who waits less at the most users."""
    if estimates.is_empty():
        return ""
    hi = int(estimates["concurrency"].max())
    grow = cl.render(claims, "scales", "ttft_p50_ms")
    faster = cl.render(claims, "faster", "ttft_p50_ms", users=hi, only_stated=True)
    return ("How the median wait for the first token changes from the fewest users to the most "
            "(lower is better):\n\n" + grow + (f"\n\nAt {hi} users, where the interval separates them:\n\n" + faster
                                               if faster else "")
            + "\n\nA server with fewer slots than users makes the others wait for whole responses; one with "
              "a slot per user makes them share each decode step, so a first token waits only for the others' "
              "prompts.")


def runtime_story(claims: pl.DataFrame) -> str:
    """Runtime against runtime (different kinds of server on the same model): every level."""
    kinds = claims.filter(pl.col("kind").is_in(["faster", "overtakes", "flips"])
                          & (pl.col("metric") == "aggregate_tok_s"))
    if kinds.is_empty():
        return ""
    different = kinds.filter(pl.col("across_kinds"))
    if different.is_empty():
        return ""
    lines = [cl.render(different, k) for k in ("overtakes", "flips", "faster")]
    return "Total output tok/s, server against server on the same model:\n\n" + "\n".join(x for x in lines if x)


def precision_story(estimates: pl.DataFrame, precision: float | None) -> str:
    """How precise the cells are, which were capped, and the errors by kind."""
    if estimates.is_empty():
        return ""
    halves = estimates["halfwidth_pct"].drop_nulls()
    text = (f"{estimates.height} cells, {int(estimates['trials'].sum())} trials. ")
    if halves.len():
        text += (f"The 95% interval of aggregate tok/s is within ±{halves.median():.1f}% of the estimate for the "
                 f"median cell (best {halves.min():.1f}%, worst {halves.max():.1f}%).")
    one = estimates.filter(pl.col("trials") == 1)
    if one.height:
        text += f" {one.height} cells have 1 trial and no interval."
    if precision:
        wide = estimates.filter(pl.col("halfwidth_pct") > precision * 100)
        if wide.height:
            text += (f"\n\nCells that stopped at the trial or time cap before reaching ±{precision:.0%}: "
                     + ", ".join(f"{r['runtime']} · {r['model']} {r['quant']} at {cl.users_text(r['concurrency'])} "
                                 f"(±{r['halfwidth_pct']:.1f}%)" for r in wide.iter_rows(named=True)) + ".")
    errs = estimates.filter(pl.col("errors") > 0)
    if errs.height:
        text += ("\n\nCells with failed requests (never counted in throughput or latency): "
                 + "; ".join(f"{r['runtime']} · {r['model']} {r['quant']} at {cl.users_text(r['concurrency'])}: "
                             f"{r['errors']} ({r['error_kinds']})" for r in errs.iter_rows(named=True)) + ".")
    else:
        text += " No request failed."
    return text


def background_story(other_cores: list[float]) -> str:
    """One sentence on the other work that ran beside the trials (telemetry.background)."""
    from gaplab.telemetry import CONTENDED_CORES

    v = sorted(other_cores)
    if not v:
        return ""
    text = (f"Other processes kept a median {v[len(v) // 2]:.2f} cores busy beside the {len(v)} trials "
            f"(max {v[-1]:.2f})")
    busy = sum(x > CONTENDED_CORES for x in v)
    if not busy:
        return text + ": the machine was otherwise quiet."
    return (text + f"; {busy} trial(s) shared the machine with more than {CONTENDED_CORES} cores of other work, "
            f"so their cells may read slower than this machine runs them: measure again on a quiet machine "
            f"(`make report FORCE=1`).")
