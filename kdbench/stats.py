"""Confidence intervals over seeds, for every number a leaderboard or README shows. No torch here.

Two functions:

- ``mean_ci(values)``: the mean of a sample and the half-width of its 95% Student-t interval,
  ``t(0.975, n - 1) * s / sqrt(n)`` with ``s`` the sample standard deviation (ddof=1).
- ``paired_gain(arm, baseline, direction)``: how much better an arm is than its baseline, as the
  mean of per-seed differences with its 95% Student-t interval. Only seeds present in both are
  paired (same seed = same initialisation and data order); ``direction`` "max" means higher is
  better, "min" lower is better, and the gain is signed so that positive is always better.

NaN values are dropped before anything is computed. With fewer than 2 values there is no
interval (NaN half-width); a gain gets a verdict (significant or not) only from
``MIN_PAIRS`` = 3 seed pairs on.
"""
import math
from dataclasses import dataclass

from scipy import stats as _scipy_stats

LEVEL = 0.95
MIN_PAIRS = 3  # fewer seed pairs than this: a mean, an interval if n >= 2, but no verdict


def t_quantile(n, level=LEVEL):
    """The two-sided Student-t quantile for a sample of ``n`` (n - 1 degrees of freedom)."""
    return float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1))


def _clean(values):
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def mean_ci(values, level=LEVEL):
    """``(mean, half_width, n)`` of ``values``: the interval is mean ± half_width.

    ``half_width`` is NaN for fewer than 2 values; ``mean`` is NaN for none.
    """
    xs = _clean(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan, n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, t_quantile(n, level) * std / math.sqrt(n), n


@dataclass(frozen=True)
class Gain:
    """A paired gain: ``mean`` and the interval ``[low, high]`` over ``n`` seed pairs.

    ``significant`` is True when the interval excludes zero, False when it does not, and None
    (no verdict) with fewer than ``MIN_PAIRS`` pairs.
    """

    mean: float
    low: float
    high: float
    n: int
    significant: object  # True | False | None


def paired_gain(arm, baseline, direction="max", level=LEVEL):
    """The gain of ``arm`` over ``baseline``, both mappings seed -> value, paired by seed.

    A seed missing from either side (or NaN on either side) drops only that pair.
    """
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', not {direction!r}")
    sign = 1.0 if direction == "max" else -1.0
    diffs = [sign * (arm[s] - baseline[s]) for s in sorted(set(arm) & set(baseline), key=str)]
    mean, half, n = mean_ci(diffs, level)
    low, high = mean - half, mean + half
    significant = None if n < MIN_PAIRS else bool(low > 0 or high < 0)
    return Gain(mean, low, high, n, significant)
