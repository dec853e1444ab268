"""Paired tests of a study's comparisons, and what a study of its size could have found.

A comparison is a label against a baseline over the seeds both ran (label − baseline per seed,
:func:`alphasel.study.stats.paired_differences`). For each: the paired t-test and the Wilcoxon
signed-rank test (exact for small samples without ties, as scipy chooses), the effect size
(mean difference / sd of the differences, Cohen's d_z), and, across every comparison a table
makes, Holm's step-down correction (statsmodels). A study of n seeds with differences of sd s
could detect, at 80% power (:func:`power`), a difference of :func:`detectable_difference` or
more; a verdict of
"no difference" is only ever "no difference detected; this study could detect ≥ X".

The detectable difference and the seeds needed for a given effect are computed at the
Bonferroni level 0.05 / m for m comparisons, the level of Holm's first step: a difference that
large is found whatever the other comparisons show.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

from alphasel.training.task_metrics import higher_is_better

#: The family-wise error rate of a study's verdicts.
LEVEL = 0.05
#: The power at which a study's detectable difference is stated.
POWER = 0.8


def paired_tests(differences: Sequence[float]) -> dict[str, float]:
    """The paired t-test's and the Wilcoxon signed-rank test's two-sided p-values of
    ``differences`` (label − baseline per seed) against 0, and the effect size d_z.

    Fewer than two differences: all NaN. Differences that are all zero: p = 1 (the two sides
    trained the same), effect 0. The same non-zero difference at every seed: no t-test (it
    needs a spread; p NaN), the Wilcoxon test's exact p. NaN values are left out."""
    data = np.asarray(differences, dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size < 2:
        return {"p_t": math.nan, "p_wilcoxon": math.nan, "effect_size": math.nan}
    if not np.any(data):
        return {"p_t": 1.0, "p_wilcoxon": 1.0, "effect_size": 0.0}
    std = float(data.std(ddof=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's notes on ties and zeros
        p_t = float(scipy_stats.ttest_1samp(data, 0.0).pvalue) if std > 0 else math.nan
        p_wilcoxon = float(scipy_stats.wilcoxon(data).pvalue)
    return {"p_t": p_t, "p_wilcoxon": p_wilcoxon,
            "effect_size": float(data.mean()) / std if std > 0 else math.copysign(
                math.inf, float(data.mean()))}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of ``pvalues`` (one family), NaN kept where a p-value is NaN and
    left out of the family."""
    from statsmodels.stats.multitest import multipletests

    values = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(values.shape, math.nan)
    finite = np.isfinite(values)
    if finite.any():
        adjusted[finite] = multipletests(values[finite], alpha=LEVEL, method="holm")[1]
    return adjusted.tolist()


def power(effect_size: float, n: int, level: float) -> float:
    """The power of a two-sided one-sample (paired) t-test of ``n`` values at ``level`` when
    the true mean is ``effect_size`` standard deviations from 0.

    statsmodels' TTestPower (scipy's noncentral t); where that returns NaN (large
    noncentralities with few degrees of freedom) the same tail as its definition's expectation
    over the χ² of the variance estimate, E_V[Φ(δ − t·√(V/df)) + Φ(−δ − t·√(V/df))], δ = d·√n,
    V ~ χ²(n − 1), t the critical value (scipy's norm, chi2 and t)."""
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        closed = float(TTestPower().power(effect_size=effect_size, nobs=n, alpha=level,
                                          alternative="two-sided"))
    if math.isfinite(closed):
        return closed
    df = n - 1
    critical = float(scipy_stats.t.ppf(1 - level / 2, df))
    delta = effect_size * math.sqrt(n)

    def rejected(v: float) -> float:
        scale = critical * math.sqrt(v / df)
        return float(scipy_stats.norm.cdf(delta - scale) + scipy_stats.norm.cdf(-delta - scale))

    return float(scipy_stats.chi2(df).expect(rejected))


def detectable_difference(n: int, std: float, comparisons: int = 1) -> float:
    """The smallest |mean difference| a paired t-test of ``n`` seeds finds with 80% power at the
    level 0.05 / ``comparisons``, when the differences have sd ``std``: d_z × std, with d_z from
    statsmodels' power of the one-sample t-test. NaN below two seeds or without a spread; inf
    when no difference is large enough (two seeds at a strict level)."""
    if n < 2 or not math.isfinite(std) or std <= 0:
        return math.nan
    level = LEVEL / max(comparisons, 1)
    largest = 1e4
    if power(largest, n, level) < POWER:
        return math.inf
    effect = optimize.brentq(lambda d: power(d, n, level) - POWER, 1e-9, largest, xtol=1e-8)
    return float(effect * std)


def seeds_needed(effect: float, std: float, comparisons: int = 1) -> float:
    """How many seeds a paired t-test needs to find a mean difference of ``effect`` with 80%
    power at the level 0.05 / ``comparisons``, when the differences have sd ``std`` (at least
    2; NaN without a spread)."""
    if not math.isfinite(std) or std <= 0 or not effect:
        return math.nan
    level, size = LEVEL / max(comparisons, 1), abs(effect) / std
    low, high = 1, 2  # power grows with n: double until it is enough, then bisect
    while power(size, high, level) < POWER:
        low, high = high, high * 2
        if high > 2**20:
            return math.inf
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if power(size, middle, level) >= POWER else (middle, high)
    return float(high)


def better(metric: str, difference: float) -> bool:
    """Whether a label − baseline difference of ``metric`` favours the label."""
    return difference > 0 if higher_is_better(metric) else difference < 0
