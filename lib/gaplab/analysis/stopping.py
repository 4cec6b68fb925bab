"""How many trials a cell gets: the one stopping rule, which the sweep follows and the report states.

A cell gets `load.trials` trials first. Then it gets another, in the next round, while it is not
capped (`load.max_trials`, `load.max_cell_seconds`, or the sweep's `load.max_sweep_seconds`) and
either its interval of aggregate tok/s is wider than `load.precision`, or a comparison it takes part
in is open: a row of the claims table (report/claims.py: faster, scales) between two cells of the
matrix on the same weights (the same quant: a comparison across files is not like for like, and no
number of trials makes it one) whose interval at STOP_LEVEL neither excludes parity nor lies inside
the equivalence margin.

Where the time budget cannot give every open item its trials, the sweep spends it where a verdict
is nearest per second of measuring (`plan`): each item's trials still needed for the report's 95%
verdict are projected from its interval (the half-width shrinks as one over the square root of the
trials) and costed at its cells' seconds per trial; the cheapest go first, those the report can
state already (open at STOP_LEVEL only) last, and an item that cannot close within its cells' caps
or the time left comes last. Both sides of a comparison run in the same round, so it stays
paired (stats.paired_ratio_interval).

Optional stopping: looking after every round and stopping once an interval decides gives a fluke
more chances than one look would. Stopped at the first 95% interval that decides, a comparison with
no true difference ends as a stated direction 12-13% of the time, not 5% (simulated: paired rounds,
2 to 5 trials, tests/unit/test_stopping.py). The sweep guards with a minimum of `load.trials`
trials and a Haybittle-Peto rule: it stops on a decision only at STOP_LEVEL, 99.9%, while the
report states the 95% interval of whatever trials there are. The interim looks then spend almost
none of the 5% (simulated: 4.4-4.7% false directions, against 4.5% for a fixed 5 trials, and 6.6-
7.3% when stopping at 99%), and the chance to find a true 8% gap is the same as at 99%: the final
95% interval does that work. Anything the sweep stopped on is decided at 95% too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from gaplab.analysis import stats
from gaplab.analysis.metrics import in_study
from gaplab.report.claims import claims_table, decided

STOP_LEVEL = 0.999


def halfwidth(values: list[float], pooled: stats.Pool | None = None) -> float | None:
    """The 95% half-width of the values' mean, as a fraction of it (the report's interval)."""
    iv = stats.mean_interval(values, pooled)
    return iv.halfwidth if iv else None


def precise(values: list[float], precision: float, pooled: stats.Pool | None = None) -> bool:
    """Whether the 95% interval of the values' mean is within `precision` of it."""
    half = halfwidth(values, pooled)
    return half is not None and half <= precision


@dataclass(frozen=True)
class Item:
    """Something still open that more trials of `cells` (cell keys) would close: a comparison,
    or a cell's own precision; `extra`: the trials each of them is projected to need for the
    report's verdict. confirms: the report's 95% interval decides it already, and only the stop
    level does not yet (such an item comes after every one the report cannot state yet)."""

    what: str
    cells: tuple[str, ...]
    extra: int
    confirms: bool = False


def more_trials(half: float, target: float, n: int) -> int:
    """Trials beyond n for a half-width `half` to shrink to `target` (both on one scale), at 1/sqrt(n)."""
    if half <= target:
        return 0
    return max(1, math.ceil(n * (half / target) ** 2 - n)) if target > 0 else 10**6


def precision_item(cell_key: str, values: list[float], precision: float, pooled: stats.Pool | None) -> Item | None:
    """The cell's own interval, where it is still wider than `precision` (or it has none yet)."""
    half = halfwidth(values, pooled)
    if half is None:
        return Item(f"precision|{cell_key}", (cell_key,), 1)
    if half <= precision:
        return None
    return Item(f"precision|{cell_key}", (cell_key,), more_trials(half, precision, len(values)))


def same_weights() -> pl.Expr:
    """Claims rows whose two sides serve the same weights (subjects are "runtime · quant")."""
    return pl.col("a").str.split(" · ").list.last() == pl.col("b").str.split(" · ").list.last()


def comparison_items(trials: pl.DataFrame, margin: float = stats.MARGIN) -> list[Item]:
    """The matrix's open comparisons (metrics.trial_summary rows of the cells measured so far):
    those undecided at STOP_LEVEL, each with the trials a side still needs for the report's 95%
    verdict. A direction needs the interval of log(ratio) narrower than |log ratio|, equivalence
    narrower than log(1 + margin) - |log ratio|; the nearer of the two counts."""
    matrix = in_study(trials, "matrix")
    if matrix.is_empty():
        return []
    kinds = pl.col("kind").is_in(["faster", "scales"]) & same_weights()
    open_verdicts = [stats.UNDECIDED, stats.NO_INTERVAL]
    at_stop = claims_table(matrix, margin=margin, level=STOP_LEVEL).filter(kinds & pl.col("verdict").is_in(open_verdicts))
    if at_stop.is_empty():
        return []
    report = {r["claim_id"]: r for r in claims_table(matrix, margin=margin).filter(kinds).iter_rows(named=True)}
    keys = {(r["model"], r["workload"], f"{r['runtime']} · {r['quant']}", r["concurrency"]): r["cell_key"]
            for r in matrix.iter_rows(named=True)}
    items = []
    for claim_id in at_stop["claim_id"].to_list():
        r = report[claim_id]
        cells = (keys[(r["model"], r["workload"], r["a"], r["users"])], keys[(r["model"], r["workload"], r["b"], r["users_b"])])
        if r["verdict"] not in open_verdicts:
            items.append(Item(claim_id, cells, 1, confirms=True))
            continue
        if r["verdict"] == stats.NO_INTERVAL:  # a side has one trial: a second gives the first interval
            items.append(Item(claim_id, cells, 1))
            continue
        est = abs(math.log(r["ratio"]))
        half = (math.log(r["ratio_hi"]) - math.log(r["ratio_lo"])) / 2
        target = max(est, math.log(1 + margin) - est)
        items.append(Item(claim_id, cells, more_trials(half, target, min(r["trials_a"], r["trials_b"]))))
    return items


def decided_share(rows: list[dict], margin: float = stats.MARGIN) -> dict[str, tuple[int, int]]:
    """(comparisons with an interval, decided ones) among the matrix's claims (faster, scales) at
    the report's 95%, from metrics.trial_summary rows: "all" of them, and those on "same weights",
    the ones the sweep spends trials on. What the sweep prints at its end."""
    if not rows:
        return {"all": (0, 0), "same weights": (0, 0)}
    table = claims_table(in_study(pl.DataFrame(rows), "matrix"), margin=margin).filter(
        pl.col("kind").is_in(["faster", "scales"]) & pl.col("ratio_lo").is_not_null())
    like = table.filter(same_weights())
    return {"all": (table.height, decided(table).height), "same weights": (like.height, decided(like).height)}


def plan(items: list[Item], seconds: dict[str, float], room: dict[str, int], budget_s: float | None) -> set[str]:
    """The cells to measure in the next round: those of the open items, cheapest first (an item's
    cost: its extra trials times its cells' seconds per trial; items the report can state already
    after those it cannot, and items projected to need more trials than their cells have room
    for (load.max_trials, load.max_cell_seconds) last, at what room there is: a projection from
    two or three trials is rough), while the projected time of all taken fits budget_s (None: no
    budget)."""
    def order(item: Item) -> tuple:
        return (any(item.extra > room[c] for c in item.cells), item.confirms,
                item.extra * sum(seconds[c] for c in item.cells))

    need: dict[str, int] = {}
    for item in sorted(items, key=order):
        want = {c: min(item.extra, room[c]) for c in item.cells}
        if not all(want.values()):
            continue
        taken = {**need, **{c: max(need.get(c, 0), n) for c, n in want.items()}}
        if budget_s is not None and sum(n * seconds[c] for c, n in taken.items()) > budget_s:
            continue
        need = taken
    return set(need)
