"""Intervals from repeated trials.

A trial (one stored run of a cell) is the unit that repeats: machine drift and the
server's state change between trials, not between the requests of one trial, so every
interval is taken over trial-level values.
- estimate: the mean of the trials' values; stability: their standard deviation (±);
- spread: trial-to-trial variation is mostly the machine's, shared by every cell one
  server measures, so it is estimated twice: from the cell's own trials, and pooled over
  all cells of the same runtime on the same machine (the pooled standard deviation of
  log values, with the summed degrees of freedom). An interval uses the larger of the
  two spreads, with the pooled degrees of freedom: a cell looking calmer than its
  runtime gets no narrower interval than the runtime's, and a noisier one keeps its own;
- 95% interval of the estimate (`level`: the sweep's stopping rule asks for 99%, stopping.py):
  Student's t (scipy.stats.t) with that spread; with no
  pool it is the cell's own t interval, wide for few trials, as it should be;
- ratio of two cells: the ratio of their geometric means, with a Welch t interval on
  the difference of the log values, each side's spread chosen as above, exponentiated;
- paired ratio: where a and b were measured in the same sweep rounds, a round's drift moves
  both sides alike, so the ratio is taken from the per-round log ratios instead (a paired t
  with one degree of freedom fewer than the rounds in common): the drift cancels in each
  ratio rather than widening both sides' spreads. Rounds that only one side has are left out.
  Its spread, like a cell's, is the larger of its own and a pooled one: each runtime's
  trial-to-trial spread once every round's drift is fitted out (round_pool: cells and rounds
  as blocks of a two-way model), with the pooled degrees of freedom;
- verdict: a direction where the interval excludes 1; "the same within 5%" (the equivalence
  margin, MARGIN unless a scenario sets load.equivalence_margin) where it lies wholly inside
  [1/(1+m), 1+m], symmetric on the log scale so that a/b and b/a get the same verdict, even if
  it also excludes 1 (a gap smaller than the margin is not one the report calls a difference);
  "undecided" where it straddles the margin.
With one trial there is no interval: the figure is shown as "1 trial, no interval".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

LEVEL = 0.95
MARGIN = 0.05  # the equivalence margin: ratios within [1/1.05, 1.05] are "the same within 5%"
UNDECIDED = "undecided"
NO_INTERVAL = "no interval"  # a side has a single trial
SAME = "the same within"  # how an equivalence verdict begins; same_text gives the margin
DIRECTIONS = ("A better", "B better")


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float | None
    hi: float | None
    sd: float | None
    n: int

    @property
    def halfwidth(self) -> float | None:
        """Half the interval's width as a fraction of the estimate."""
        if self.lo is None or self.hi is None or not self.estimate:
            return None
        return (self.hi - self.lo) / 2 / abs(self.estimate)


def _clean(values) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return x[np.isfinite(x)]


@dataclass(frozen=True)
class Pool:
    """Trial-to-trial spread pooled over cells: sd of log values and its degrees of freedom."""

    log_sd: float
    df: int


def _logs(values) -> np.ndarray:
    x = _clean(values)
    return np.log(x[x > 0])


def pool(groups) -> Pool | None:
    """The pooled sd of log values over groups (each a cell's trial values) with 2+ trials."""
    logs = [g for g in (_logs(v) for v in groups) if g.size >= 2]
    df = sum(g.size - 1 for g in logs)
    if not df:
        return None
    return Pool(math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in logs) / df), df)


def runtime_pools(trials, metrics: list[str]) -> dict[tuple, Pool | None]:
    """(machine_id, runtime, metric) -> the trial-to-trial spread pooled over that runtime's cells on
    that machine: the pool every interval of a cell uses, in the report and in the sweep's stopping
    rule alike. trials: a polars frame with machine_id, runtime, cell_key and the metrics' columns."""
    out = {}
    for (machine, runtime), g in trials.group_by("machine_id", "runtime"):
        cells = g.group_by("cell_key")
        for m in metrics:
            if m in g.columns:
                out[(machine, runtime, m)] = pool([c[m].to_list() for _, c in cells])
    return out


def spread(logs: np.ndarray, pooled: Pool | None) -> tuple[float, float]:
    """(sd of log values, degrees of freedom) for one cell: its own, or the pool's when larger."""
    own = float(logs.std(ddof=1))
    if pooled is None:
        return own, logs.size - 1
    return max(own, pooled.log_sd), pooled.df


def mean_interval(values, pooled: Pool | None = None, level: float = LEVEL) -> Interval | None:
    """Mean of trial values with its 95% t interval and the standard deviation across trials
    (the spread and degrees of freedom of the interval as the module docstring says)."""
    x = _clean(values)
    if x.size == 0:
        return None
    m = float(x.mean())
    if x.size < 2:
        return Interval(m, None, None, None, 1)
    sd = float(x.std(ddof=1))
    logs = _logs(x)
    df: float  # spread's degrees of freedom are fractional (Welch)
    if pooled is None or logs.size < x.size:
        rel, df = sd / abs(m) if m else 0.0, x.size - 1
    else:
        rel, df = spread(logs, pooled)
    half = float(st.t.ppf(0.5 + level / 2, df)) * rel * abs(m) / math.sqrt(x.size)
    return Interval(m, m - half, m + half, sd, int(x.size))


def ratio_interval(a, b, pool_a: Pool | None = None, pool_b: Pool | None = None, level: float = LEVEL) -> Interval | None:
    """Ratio of a's values to b's (geometric means), with a Welch 95% interval on the log scale."""
    la, lb = _logs(a), _logs(b)
    if la.size == 0 or lb.size == 0:
        return None
    diff = float(la.mean() - lb.mean())
    if la.size < 2 or lb.size < 2:
        return Interval(math.exp(diff), None, None, None, min(la.size, lb.size))
    (sa, dfa), (sb, dfb) = spread(la, pool_a), spread(lb, pool_b)
    va, vb = sa ** 2 / la.size, sb ** 2 / lb.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(math.exp(diff), math.exp(diff), math.exp(diff), 0.0, min(la.size, lb.size))
    df = (va + vb) ** 2 / (va ** 2 / dfa + vb ** 2 / dfb)
    half = float(st.t.ppf(0.5 + level / 2, df)) * se
    return Interval(math.exp(diff), math.exp(diff - half), math.exp(diff + half), se, min(la.size, lb.size))


def round_pool(cells) -> Pool | None:
    """The trial-to-trial spread left once each round's drift is taken out: cells is a list of
    {round: value} (a runtime's cells), fitted as log value = cell + round + noise by least
    squares; the residual sd of the log values, with N - rank degrees of freedom."""
    logs = [{r: math.log(v) for r, v in c.items() if v is not None and v > 0 and math.isfinite(v)} for c in cells]
    logs = [c for c in logs if c]
    rounds = sorted({r for c in logs for r in c})
    n = sum(len(c) for c in logs)
    if not n:
        return None
    x = np.zeros((n, len(logs) + len(rounds)))
    y = np.zeros(n)
    at = {r: len(logs) + k for k, r in enumerate(rounds)}
    i = 0
    for k, c in enumerate(logs):
        for r, v in c.items():
            x[i, k] = x[i, at[r]] = 1.0
            y[i] = v
            i += 1
    fit, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    df = n - int(rank)
    if df <= 0:
        return None
    return Pool(math.sqrt(float(((y - x @ fit) ** 2).sum()) / df), df)


def paired_ratio_interval(a, b, pool_a: Pool | None = None, pool_b: Pool | None = None,
                          level: float = LEVEL) -> Interval | None:
    """Ratio of a's values to b's from pairs (a's and b's value in one round): the geometric
    mean of the per-round ratios, with a paired t 95% interval on the log ratios. With pools
    (round_pool of each side's runtime) the spread of a log ratio is the larger of its own and
    the pools' (sqrt(sd_a² + sd_b²)), with the pools' degrees of freedom (Welch-Satterthwaite),
    as ratio_interval does for unpaired sides."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    d = np.asarray([math.log(x) - math.log(y) for x, y in pairs if x > 0 and y > 0
                    and math.isfinite(x) and math.isfinite(y)], dtype=float)
    if d.size == 0:
        return None
    m = float(d.mean())
    if d.size < 2:
        return Interval(math.exp(m), None, None, None, 1)
    df: float  # fractional once the pools add theirs (Welch)
    sd, df = float(d.std(ddof=1)), d.size - 1
    if pool_a is not None and pool_b is not None:
        va, vb = pool_a.log_sd ** 2, pool_b.log_sd ** 2
        if va + vb > 0:
            sd, df = max(sd, math.sqrt(va + vb)), (va + vb) ** 2 / (va ** 2 / pool_a.df + vb ** 2 / pool_b.df)
    se = sd / math.sqrt(d.size)
    half = float(st.t.ppf(0.5 + level / 2, df)) * se
    return Interval(math.exp(m), math.exp(m - half), math.exp(m + half), se, int(d.size))


def difference_interval(a, b) -> Interval | None:
    """Mean of b's values minus mean of a's, with a Welch 95% t interval: for parts of a
    latency, which can be near zero, so a ratio of logs does not fit them."""
    xa, xb = _clean(a), _clean(b)
    if xa.size == 0 or xb.size == 0:
        return None
    diff = float(xb.mean() - xa.mean())
    if xa.size < 2 or xb.size < 2:
        return Interval(diff, None, None, None, min(xa.size, xb.size))
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff, 0.0, min(xa.size, xb.size))
    df = (va + vb) ** 2 / (va ** 2 / (xa.size - 1) + vb ** 2 / (xb.size - 1))
    half = float(st.t.ppf(0.5 + LEVEL / 2, df)) * se
    return Interval(diff, diff - half, diff + half, se, min(xa.size, xb.size))


def same_text(margin: float = MARGIN) -> str:
    """The equivalence verdict, as claims state it."""
    return f"{SAME} {margin * 100:g}%"


def verdict(ratio: Interval | None, higher_is_better: bool = True, margin: float = MARGIN) -> str:
    """'the same within 5%' (the interval inside the margin), 'A better' or 'B better' (it
    excludes 1), else 'undecided'; 'no interval' when a side has a single trial."""
    if ratio is None or ratio.lo is None or ratio.hi is None:
        return NO_INTERVAL
    if 1 / (1 + margin) <= ratio.lo and ratio.hi <= 1 + margin:
        return same_text(margin)
    if ratio.lo > 1 or ratio.hi < 1:
        a_higher = ratio.lo > 1
        return "A better" if a_higher == higher_is_better else "B better"
    return UNDECIDED


def is_same(verdict_text: str | None) -> bool:
    """Whether a verdict is an equivalence (any margin)."""
    return verdict_text is not None and verdict_text.startswith(SAME)
