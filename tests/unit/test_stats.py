import math

import pytest
from scipy import stats as st

from gaplab import stats


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
    ([10, 12, 14], [11, 12, 13], True, "no measurable difference"),
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

    from gaplab.stats import difference_interval

    a, b = [10.0, 12.0, 11.0], [20.0, 23.0, 21.0, 22.0]
    iv = difference_interval(a, b)
    ref = st.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert iv.estimate == pytest.approx(21.5 - 11.0)
    assert (iv.lo, iv.hi) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert difference_interval([1.0], b).lo is None
    assert difference_interval([], b) is None
    same = difference_interval([0.0, 0.0], [0.0, 0.0])  # parts can be exactly zero
    assert (same.estimate, same.lo, same.hi) == (0.0, 0.0, 0.0)
