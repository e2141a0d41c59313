"""Confidence intervals against scipy and closed forms, their coverage by simulation, and the verdict rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lipaudit.stats import Interval, Verdict, direction_verdict, spearman_interval, t_interval

FIXED = [0.812, 0.845, 0.799, 0.830, 0.861]


def test_t_interval_matches_scipy_on_fixed_numbers() -> None:
    iv = t_interval(FIXED, 0.95)
    ref = stats.ttest_1samp(FIXED, 0.0).confidence_interval(0.95)
    assert iv.estimate == pytest.approx(np.mean(FIXED), rel=1e-12)
    assert (iv.low, iv.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    ref90 = stats.ttest_1samp(FIXED, 0.0).confidence_interval(0.90)
    iv90 = t_interval(FIXED, 0.90)
    assert (iv90.low, iv90.high) == pytest.approx((ref90.low, ref90.high), rel=1e-12)
    assert iv90.high - iv90.low < iv.high - iv.low


def test_t_interval_closed_form_for_three_seeds() -> None:
    # n = 3: mean ± t_{0.975, 2} · s/√3 with t_{0.975, 2} = 4.302652729749464 (tables), s = 1 for (1, 2, 3)
    iv = t_interval([1.0, 2.0, 3.0])
    assert iv.estimate == 2.0
    assert iv.high - 2.0 == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-12)
    assert iv.n == 3 and iv.method == "t"


def test_t_interval_degenerate_cases() -> None:
    one = t_interval([0.4])
    assert one.estimate == 0.4 and not one.defined
    assert not t_interval([]).defined
    same = t_interval([0.5, 0.5, 0.5])
    assert (same.low, same.high) == (0.5, 0.5)
    with pytest.raises(ValueError, match="finite"):
        t_interval([1.0, math.nan])
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], 1.0)


def test_t_interval_covers_the_true_mean_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    trials = 4000
    hits = 0
    for _ in range(trials):
        iv = t_interval(rng.normal(1.5, 0.3, size=3).tolist())
        hits += iv.low <= 1.5 <= iv.high
    # binomial standard error at p = 0.95, 4000 trials: 0.0034; ± 4 standard errors
    assert abs(hits / trials - 0.95) < 0.014


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=12))
@settings(max_examples=60, deadline=None)
def test_t_interval_contains_the_mean_and_matches_scipy(values: list[float]) -> None:
    iv = t_interval(values)
    assert iv.low <= iv.estimate <= iv.high
    if np.std(values) > 1e-9:
        ref = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
        assert (iv.low, iv.high) == pytest.approx((ref.low, ref.high), rel=1e-9, abs=1e-9)


def test_spearman_interval_against_scipy_and_the_fisher_z_formula() -> None:
    x = [0.61, 0.72, 0.55, 0.80, 0.91, 0.47, 0.66, 0.73, 0.59, 0.88]
    y = [0.40, 0.52, 0.41, 0.49, 0.70, 0.30, 0.45, 0.61, 0.50, 0.58]
    iv = spearman_interval(x, y)
    rho = stats.spearmanr(x, y).statistic
    assert iv.estimate == pytest.approx(rho, rel=1e-12)
    # Bonett & Wright (2000): z = atanh(ρ) ± 1.959963984540054 · √((1 + ρ²/2)/(n − 3))
    se = math.sqrt((1 + rho**2 / 2) / (len(x) - 3))
    assert iv.low == pytest.approx(math.tanh(math.atanh(rho) - 1.959963984540054 * se), rel=1e-9)
    assert iv.high == pytest.approx(math.tanh(math.atanh(rho) + 1.959963984540054 * se), rel=1e-9)
    assert -1 < iv.low < iv.estimate < iv.high < 1


def test_spearman_interval_undefined_cases() -> None:
    assert not spearman_interval([1, 2, 3], [3, 2, 1]).defined  # n < 4
    assert not spearman_interval([1, 1, 1, 1], [1, 2, 3, 4]).defined  # constant
    perfect = spearman_interval([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert (perfect.estimate, perfect.low, perfect.high) == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="equal length"):
        spearman_interval([1, 2, 3, 4], [1, 2, 3])


def test_spearman_interval_coverage_under_independence() -> None:
    rng = np.random.default_rng(1)
    trials, hits = 2000, 0
    for _ in range(trials):
        iv = spearman_interval(rng.normal(size=30).tolist(), rng.normal(size=30).tolist())
        hits += iv.low <= 0.0 <= iv.high
    assert abs(hits / trials - 0.95) < 0.02


def test_direction_verdicts() -> None:
    def iv(low: float, high: float) -> Interval:
        return Interval((low + high) / 2, low, high, 3, 0.95, "t")

    assert direction_verdict(iv(-0.3, -0.1), 0.0, "below") is Verdict.REPRODUCED
    assert direction_verdict(iv(0.1, 0.3), 0.0, "below") is Verdict.NOT_REPRODUCED
    assert direction_verdict(iv(-0.1, 0.1), 0.0, "below") is Verdict.INCONCLUSIVE
    assert direction_verdict(iv(0.1, 0.3), 0.0, "above") is Verdict.REPRODUCED
    assert direction_verdict(iv(-0.2, -0.1), -0.05, "above") is Verdict.NOT_REPRODUCED
    assert direction_verdict(Interval(0.2, math.nan, math.nan, 1, 0.95, "t"), 0.0, "above") is Verdict.INCONCLUSIVE
    with pytest.raises(ValueError, match="below"):
        direction_verdict(iv(0, 1), 0.0, "sideways")
