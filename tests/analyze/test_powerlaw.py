import contextlib
import io

import numpy as np
import pytest

from alphasel.errors import AnalysisOptionError
from alphasel.powerlaw import ESTIMATORS, fit_power_law


def pareto_sample(alpha: float, size: int, xmin: float = 1.0, seed: int = 0) -> np.ndarray:
    """i.i.d. draws from p(x) ∝ x^(−alpha), x ≥ xmin (inverse-CDF sampling)."""
    uniform = np.random.default_rng(seed).random(size)
    return xmin * (1.0 - uniform) ** (-1.0 / (alpha - 1.0))


@pytest.mark.parametrize("true_alpha", [2.0, 3.0, 4.5])
def test_ks_recovers_known_exponent(true_alpha):
    fit = fit_power_law(pareto_sample(true_alpha, 4000), "ks")
    # Standard error at the fitted tail size is (α−1)/√n; allow four of them.
    assert abs(fit.alpha - true_alpha) < 4 * fit.sigma + 0.05
    assert fit.D < 0.05


def test_ks_finds_the_tail_above_a_bulk():
    rng = np.random.default_rng(1)
    bulk = rng.uniform(0.01, 0.5, size=3000)
    tail = pareto_sample(2.5, 1000, xmin=1.0, seed=2)
    fit = fit_power_law(np.concatenate([bulk, tail]), "ks")
    assert 0.5 <= fit.xmin <= 2.0
    assert abs(fit.alpha - 2.5) < 0.25


def _random_spectra(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        shape = (int(rng.integers(12, 400)), int(rng.integers(9, 160)))
        matrix = rng.standard_t(rng.uniform(1.5, 6.0), size=shape)
        yield np.linalg.svd(matrix, compute_uv=False) ** 2


def test_ks_equals_weightwatcher_fit_including_small_n():
    """Same xmin, alpha and D as WeightWatcher 0.7.7's WWFit on 120 random heavy-tailed spectra
    (many below its small-N cutoff of 20 eigenvalues)."""
    from weightwatcher.WW_powerlaw import WWFit

    small = 0
    for evals in _random_spectra(120):
        with contextlib.redirect_stdout(io.StringIO()):  # WWFit prints on small N
            reference = WWFit(evals[evals > 1e-5])
        ours = fit_power_law(evals, "ks")
        small += len(evals) < 20
        assert ours.xmin == reference.xmin
        assert ours.alpha == pytest.approx(reference.alpha, rel=1e-9)
        assert ours.D == pytest.approx(reference.D, rel=1e-9, abs=1e-12)
        assert ours.sigma == pytest.approx(reference.sigma, rel=1e-9)
    assert small > 5


def test_median_starts_the_tail_at_the_median_eigenvalue():
    evals = pareto_sample(3.0, 501, seed=3)
    fit = fit_power_law(evals, "median")
    assert fit.xmin == np.sort(evals)[250]
    assert fit.num_tail == 251


def test_peak_xmin_lies_near_the_histogram_peak():
    rng = np.random.default_rng(4)
    evals = np.concatenate([rng.lognormal(0.0, 0.3, 3000), pareto_sample(2.5, 300, 3.0, 5)])
    fit = fit_power_law(evals, "peak")
    counts, edges = np.histogram(np.log10(evals), bins=100)
    peak = 10 ** edges[np.argmax(counts)]
    assert 0.95 * peak <= fit.xmin <= 1.5 * peak
    assert fit.alpha > 1


def test_estimators_differ_on_the_same_spectrum():
    matrix = np.random.default_rng(7).standard_t(3.0, size=(400, 200))
    evals = np.linalg.svd(matrix, compute_uv=False) ** 2
    alphas = {name: fit_power_law(evals, name).alpha for name in ESTIMATORS}
    assert len(set(np.round(list(alphas.values()), 6))) == 3


def test_too_few_or_equal_eigenvalues_give_no_fit():
    assert fit_power_law(np.array([0.0, 0.0, 3.0])) is None
    with np.errstate(all="raise"):  # and no floating-point warning on the way
        for estimator in ESTIMATORS:
            assert fit_power_law(np.full(64, 2.5), estimator) is None


def test_unknown_estimator_names_the_valid_ones():
    with pytest.raises(AnalysisOptionError, match="ks, median, peak"):
        fit_power_law(np.arange(1.0, 50.0), "mle")
