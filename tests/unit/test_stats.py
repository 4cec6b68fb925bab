import math

import pytest
from scipy import stats as st

from gaplab.analysis import stats


def test_mean_interval_is_students_t_over_trials():
    iv = stats.mean_interval([9.0, 10.0, 11.0, 14.0])
    sd = st.tstd([9.0, 10.0, 11.0, 14.0])
    half = st.t.ppf(0.975, 3) * sd / 2
    assert (iv.estimate, iv.n) == (11.0, 4)
    assert iv.lo == pytest.approx(11 - half) and iv.hi == pytest.approx(11 + half) and iv.sd == pytest.approx(sd)
    assert iv.halfwidth == pytest.approx(half / 11)


def test_one_trial_has_no_interval_and_nothing_is_none():
    assert stats.mean_interval([None, 5.0]) == stats.Interval(5.0, None, None, None, 1)
    assert stats.mean_interval([]) is None


def test_ratio_interval_is_welch_on_logs():
    a, b = [20.0, 21.0, 22.0], [10.0, 10.5, 11.0, 12.0]
    iv = stats.ratio_interval(a, b)
    la, lb = [math.log(x) for x in a], [math.log(x) for x in b]
    welch = st.ttest_ind(la, lb, equal_var=False).confidence_interval(0.95)
    assert iv.estimate == pytest.approx(math.exp(sum(la) / 3 - sum(lb) / 4))
    assert iv.lo == pytest.approx(math.exp(welch.low)) and iv.hi == pytest.approx(math.exp(welch.high))


@pytest.mark.parametrize("a, b, higher, verdict", [
    ([20, 21, 22], [10, 11, 12], True, "A better"),
    ([20, 21, 22], [10, 11, 12], False, "B better"),  # e.g. latency: A's is higher, so B is better
    ([10, 12, 14], [11, 12, 13], True, "undecided"),
    ([10], [11, 12, 13], True, "no interval"),
])
def test_verdict_needs_the_interval_to_exclude_parity(a, b, higher, verdict):
    assert stats.verdict(stats.ratio_interval(a, b), higher) == verdict


def test_pool_is_the_pooled_sd_of_log_values_with_summed_degrees_of_freedom():
    groups = [[10.0, 11.0, 12.0], [20.0, 22.0], [5.0]]  # a one-trial cell adds nothing
    p = stats.pool(groups)
    ss = sum(sum((math.log(v) - sum(map(math.log, g)) / len(g)) ** 2 for v in g) for g in groups[:2])
    assert p.df == 3 and p.log_sd == pytest.approx(math.sqrt(ss / 3))
    assert stats.pool([[1.0], [2.0]]) is None


def test_a_calm_cell_takes_its_runtimes_spread_and_a_noisy_one_keeps_its_own():
    pooled = stats.Pool(log_sd=0.05, df=40)
    calm = stats.mean_interval([100.0, 100.5, 99.5], pooled)
    half = st.t.ppf(0.975, 40) * 0.05 * 100 / math.sqrt(3)
    assert calm.hi - calm.estimate == pytest.approx(half)
    noisy_values = [80.0, 100.0, 120.0]
    noisy = stats.mean_interval(noisy_values, pooled)
    own_log_sd = st.tstd([math.log(v) for v in noisy_values])
    assert noisy.hi - noisy.estimate == pytest.approx(st.t.ppf(0.975, 40) * own_log_sd * 100 / math.sqrt(3))
    # the pool's degrees of freedom make the interval narrower than three trials alone would
    assert noisy.hi - noisy.lo < stats.mean_interval(noisy_values).hi - stats.mean_interval(noisy_values).lo


def test_a_difference_interval_is_welchs_and_needs_two_trials_a_side():
    from scipy import stats as st

    from gaplab.analysis.stats import difference_interval

    a, b = [10.0, 12.0, 11.0], [20.0, 23.0, 21.0, 22.0]
    iv = difference_interval(a, b)
    ref = st.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert iv.estimate == pytest.approx(21.5 - 11.0)
    assert (iv.lo, iv.hi) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert difference_interval([1.0], b).lo is None
    assert difference_interval([], b) is None
    same = difference_interval([0.0, 0.0], [0.0, 0.0])  # parts can be exactly zero
    assert (same.estimate, same.lo, same.hi) == (0.0, 0.0, 0.0)


DRIFT = [0.0, 0.25, -0.2, 0.15, -0.1]  # each round's drift of the machine, on the log scale


def test_a_paired_interval_is_narrower_than_welchs_under_a_shared_drift():
    noise_a, noise_b = [0.01, -0.02, 0.0, 0.015, -0.01], [-0.01, 0.0, 0.02, -0.015, 0.01]
    a = [100 * math.exp(d + e) for d, e in zip(DRIFT, noise_a)]
    b = [80 * math.exp(d + e) for d, e in zip(DRIFT, noise_b)]
    paired, welch = stats.paired_ratio_interval(a, b), stats.ratio_interval(a, b)
    logs = [math.log(x / y) for x, y in zip(a, b)]
    ref = st.ttest_1samp(logs, 0).confidence_interval(0.95)
    assert (paired.lo, paired.hi) == (pytest.approx(math.exp(ref.low)), pytest.approx(math.exp(ref.high)))
    assert paired.lo < 1.25 < paired.hi and welch.lo < 1.25 < welch.hi
    assert paired.hi / paired.lo < (welch.hi / welch.lo) ** 0.2  # the drift no longer widens it
    assert stats.verdict(welch) == "undecided" and stats.verdict(paired) == "A better"


def test_round_pool_takes_each_rounds_drift_out_of_the_spread():
    cells = [{r: base * math.exp(d + e) for r, (d, e) in enumerate(zip(DRIFT, noise))}
             for base, noise in ((100, [0.01, -0.01, 0.0, 0.02, -0.02]), (50, [-0.01, 0.01, 0.01, -0.02, 0.01]),
                                 (20, [0.0, 0.0, -0.01, 0.0, 0.01]))]
    pooled, blocked = stats.pool([list(c.values()) for c in cells]), stats.round_pool(cells)
    assert blocked.df == 15 - 3 - 5 + 1 and pooled.df == 12
    assert blocked.log_sd < 0.03 < 0.15 < pooled.log_sd
    assert stats.round_pool([{1: 5.0}, {2: 6.0}]) is None  # no trial left over to measure noise with


@pytest.mark.parametrize("lo, hi, margin, said", [
    (0.96, 1.04, 0.05, "the same within 5%"),
    (1 / 1.05, 1.05, 0.05, "the same within 5%"),  # the margin's own ends are inside it
    (1.01, 1.04, 0.05, "the same within 5%"),  # excludes 1, but by less than the margin
    (0.94, 1.02, 0.05, "undecided"),  # reaches outside the margin on one side
    (0.97, 1.06, 0.05, "undecided"),
    (1.01, 1.06, 0.05, "A better"),
    (0.92, 1.08, 0.10, "the same within 10%"),
])
def test_equivalence_is_stated_only_for_an_interval_inside_the_margin(lo, hi, margin, said):
    ratio = stats.Interval(1.0, lo, hi, 0.01, 3)
    assert stats.verdict(ratio, True, margin) == said
    assert stats.is_same(said) == said.startswith("the same")


def _coverage(trials: int, rounds: int, pooled: bool, seed: int) -> float:
    """Share of simulated comparisons whose paired interval holds the true ratio (1.3): two
    cells (and two more of the same runtime for the pool) in `rounds` rounds, each round
    moving every cell by a shared drift (sd 0.2 on the log scale), each trial by noise (0.05)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    hit = 0
    for _ in range(trials):
        drift = rng.normal(0, 0.2, rounds)
        cells = [{r: base * math.exp(drift[r] + rng.normal(0, 0.05)) for r in range(rounds)}
                 for base in (130.0, 100.0, 60.0, 40.0)]
        a, b = list(cells[0].values()), list(cells[1].values())
        pool = stats.round_pool(cells) if pooled else None
        iv = stats.paired_ratio_interval(a, b, pool, pool)
        hit += iv.lo <= 1.3 <= iv.hi
    return hit / trials


@pytest.mark.parametrize("rounds, pooled", [(3, False), (5, False), (3, True)])
def test_paired_intervals_cover_a_known_ratio_about_95_percent_of_the_time(rounds, pooled):
    assert 0.93 <= _coverage(2000, rounds, pooled, seed=27 + rounds) <= 0.97
