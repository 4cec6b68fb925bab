"""The sentences of the published claims page: how many of the articles' claims hold here, and how
far other tools' definitions of a metric move its value."""

from __future__ import annotations

import polars as pl

from gaplab.report.markup import plain


def published_story(result: pl.DataFrame) -> str:
    """How many published claims hold here, from how many articles."""
    if result.is_empty():
        return "The claims file holds no claims."
    counts = result.group_by("verdict").len()
    n = dict(zip(counts["verdict"], counts["len"]))
    words = {"holds here": "hold", "does not hold here": "do not hold", "mixed here": "mixed",
             "undecided here": "undecided", "not testable here": "not testable here"}
    parts = [f"{n[v]} {w}" for v, w in words.items() if v in n]
    seeds = result["seed_file"].n_unique()
    tested = result.filter(pl.col("verdict") != "not testable here")
    return (f"{result.height} claims from {seeds} articles, each tested on this machine's rows: "
            + ", ".join(parts) + f". The {tested.height} tested claims are decided by intervals, not by the "
            "estimates alone: a claim holds only where every comparison it covers excludes the opposite. "
            "Articles that contradict each other (which runtime is faster for one user, which reaches the "
            "first token sooner) are both listed, and at most one of each pair can hold on one machine.")


def definitions_story(shifts: pl.DataFrame) -> str:
    """How far each other convention moves a figure from this report's, at the extremes over cells."""
    if shifts.is_empty():
        return ""
    others = shifts.filter(pl.col("ratio") != 1.0)
    parts = []
    for (metric, conv), g in others.group_by("metric", "convention", maintain_order=True):
        lo, hi = g.sort("lo").row(0, named=True), g.sort("hi").row(-1, named=True)
        if hi["hi"] < 1.01 and lo["lo"] > 0.99:
            parts.append(f"{plain(metric)} as {plain(conv.replace('_', ' '))}: within 1% of ours in every cell")
        else:
            parts.append(f"{plain(metric)} as {plain(conv.replace('_', ' '))}: ×{lo['lo']:.2f} ({plain(lo['runtime'])}) "
                         f"to ×{hi['hi']:.2f} ({plain(hi['runtime'])}) of ours")
    return ("By definition alone, from the same rows (each cell's median under a convention over its median "
            "under this report's): " + "; ".join(parts) + ". A published figure that used another convention "
            "can be read against this report's only after that factor.")
