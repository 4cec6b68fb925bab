"""Intervals from repeated trials.

A trial (one stored run of a cell) is the unit that repeats: machine drift and the
server's state change between trials, not between the requests of one trial, so every
interval is taken over trial-level values.
- estimate: the mean of the trials' values; stability: their standard deviation (±);
- 95% interval of the estimate: Student's t over the trials (scipy.stats.t), which is
  wide for few trials, as it should be;
- ratio of two cells: the ratio of their geometric means, with a Welch t interval on
  the difference of the log values (unequal variances and trial counts), exponentiated.
With one trial there is no interval: the figure is shown as "1 trial, no interval".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

LEVEL = 0.95


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
        if self.lo is None or not self.estimate:
            return None
        return (self.hi - self.lo) / 2 / abs(self.estimate)


def _clean(values) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return x[np.isfinite(x)]


def mean_interval(values) -> Interval | None:
    """Mean of trial values with its 95% t interval and the standard deviation across trials."""
    x = _clean(values)
    if x.size == 0:
        return None
    m = float(x.mean())
    if x.size < 2:
        return Interval(m, None, None, None, 1)
    sd = float(x.std(ddof=1))
    half = float(st.t.ppf(0.5 + LEVEL / 2, x.size - 1)) * sd / math.sqrt(x.size)
    return Interval(m, m - half, m + half, sd, int(x.size))


def ratio_interval(a, b) -> Interval | None:
    """Ratio of a's values to b's (geometric means), with a Welch 95% interval on the log scale."""
    la, lb = np.log(_clean(a)[_clean(a) > 0]), np.log(_clean(b)[_clean(b) > 0])
    if la.size == 0 or lb.size == 0:
        return None
    diff = float(la.mean() - lb.mean())
    if la.size < 2 or lb.size < 2:
        return Interval(math.exp(diff), None, None, None, min(la.size, lb.size))
    va, vb = la.var(ddof=1) / la.size, lb.var(ddof=1) / lb.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(math.exp(diff), math.exp(diff), math.exp(diff), 0.0, min(la.size, lb.size))
    df = (va + vb) ** 2 / (va ** 2 / (la.size - 1) + vb ** 2 / (lb.size - 1))
    half = float(st.t.ppf(0.5 + LEVEL / 2, df)) * se
    return Interval(math.exp(diff), math.exp(diff - half), math.exp(diff + half), se, min(la.size, lb.size))


def verdict(ratio: Interval | None, higher_is_better: bool = True) -> str:
    """'A better', 'B better' or 'no measurable difference' (the interval holds 1), or
    'no interval' when a side has a single trial."""
    if ratio is None or ratio.lo is None:
        return "no interval"
    if ratio.lo > 1 or ratio.hi < 1:
        a_higher = ratio.lo > 1
        return "A better" if a_higher == higher_is_better else "B better"
    return "no measurable difference"
