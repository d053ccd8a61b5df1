"""Intervals over seeds: Student-t half-widths and paired gains, against hand-computed values."""
import math

import pytest

from kdbench import stats


def test_t_quantiles_match_the_tables():
    assert math.isclose(stats.t_quantile(3), 4.3027, abs_tol=1e-4)  # 2 degrees of freedom
    assert math.isclose(stats.t_quantile(2), 12.7062, abs_tol=1e-4)
    assert math.isclose(stats.t_quantile(5), 2.7764, abs_tol=1e-4)


def test_mean_ci_is_t_times_std_over_sqrt_n():
    mean, half, n = stats.mean_ci([1.0, 2.0, 3.0])  # std 1
    assert (mean, n) == (2.0, 3) and math.isclose(half, 4.302653 / math.sqrt(3), rel_tol=1e-6)
    mean, half, n = stats.mean_ci([5.0, float("nan")])  # NaN dropped: one value, no interval
    assert (mean, n) == (5.0, 1) and math.isnan(half)
    mean, half, n = stats.mean_ci([])
    assert n == 0 and math.isnan(mean) and math.isnan(half)


def test_paired_gain_pairs_by_seed_and_a_missing_seed_drops_only_its_pair():
    arm = {0: 84.0, 1: 86.0, 2: 85.0}
    base = {0: 80.0, 1: 82.0, 2: 83.0, 3: 99.0}  # seed 3 has no partner
    gain = stats.paired_gain(arm, base)
    # differences 4, 4, 2: mean 10/3, std sqrt(4/3)
    assert gain.n == 3 and math.isclose(gain.mean, 10 / 3)
    half = 4.302653 * math.sqrt(4 / 3) / math.sqrt(3)
    assert math.isclose(gain.low, 10 / 3 - half, rel_tol=1e-6) and math.isclose(gain.high, 10 / 3 + half, rel_tol=1e-6)
    assert gain.significant is True


def test_paired_gain_is_direction_aware():
    lower_is_better = stats.paired_gain({0: 90.0, 1: 86.0, 2: 88.0}, {0: 100.0, 1: 98.0, 2: 99.0}, "min")
    assert lower_is_better.mean > 0 and lower_is_better.significant is True
    with pytest.raises(ValueError):
        stats.paired_gain({0: 1.0}, {0: 1.0}, "up")


def test_verdicts_need_three_pairs_and_an_interval_that_excludes_zero():
    noisy = stats.paired_gain({0: 81.0, 1: 83.0, 2: 82.0}, {0: 82.0, 1: 81.0, 2: 82.0})  # -1, +2, 0
    assert noisy.low < 0 < noisy.high and noisy.significant is False
    two = stats.paired_gain({0: 90.0, 1: 91.0}, {0: 80.0, 1: 80.0})
    assert two.n == 2 and two.mean == 10.5 and two.significant is None  # no verdict from 2 pairs
    one = stats.paired_gain({0: 90.0}, {0: 80.0, 1: 80.0})
    assert one.n == 1 and one.mean == 10.0 and math.isnan(one.low) and one.significant is None
