"""Power-law fits of an eigenvalue tail, vectorised over candidate xmins.

Estimators (DESIGN.md): ``ks`` (WeightWatcher 0.7.7's WWFit: every eigenvalue but the largest is
a candidate xmin, keep the one with the smallest KS distance; below 20 eigenvalues its small-N
variant), ``median`` (xmin at the median eigenvalue) and ``peak`` (xmin near the peak of a
100-bin histogram of log10 eigenvalues, KS scan in a window around it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alphasel.errors import AnalysisOptionError

ESTIMATORS = ("ks", "median", "peak")
#: Eigenvalues at or below this are treated as zero (WeightWatcher's EVALS_THRESH).
EVALS_THRESHOLD = 1e-5
#: Below this many eigenvalues WeightWatcher switches to its small-N fit.
SMALL_N_CUTOFF = 20
_SMALL_N_MIN_TAIL = 8
# Bound on the candidates × tail work array of the KS scan (float64 elements, ~64 MB).
_CHUNK_ELEMENTS = 8_000_000
# Rows per chunk of the KS scan: small enough that a chunk wastes little of the j < i triangle.
_ROWS_PER_CHUNK = 64
# Mean log-excess below which a tail counts as equal eigenvalues (see _tail_alphas).
_FLAT_TAIL = 1e-12


@dataclass(frozen=True)
class PowerLawFit:
    """The chosen tail fit."""

    alpha: float
    """Power-law exponent of p(λ) ∝ λ^(−α) above xmin."""
    xmin: float
    """Start of the fitted tail."""
    D: float
    """KS distance between the tail and the fitted power law."""
    sigma: float
    """Standard error of alpha, (α − 1)/√n_tail."""
    num_tail: int
    """Number of eigenvalues in the fitted tail (≥ xmin among those fitted)."""


def check_estimator(estimator: str) -> str:
    if estimator not in ESTIMATORS:
        raise AnalysisOptionError(
            f"unknown estimator '{estimator}': choose one of {', '.join(ESTIMATORS)}"
        )
    return estimator


def _tail_alphas(log_data: np.ndarray, starts: np.ndarray, bias_corrected: bool) -> np.ndarray:
    """MLE alpha for each tail data[i:], i in starts: 1 + n / Σ ln(λ/λ_i).

    A tail whose mean ln(λ/λ_i) is below 1e-12 holds equal eigenvalues up to rounding: its
    alpha is infinite (no power law), not the 1e15 that rounding noise would give.
    """
    suffix_log_sums = np.cumsum(log_data[::-1])[::-1]
    n = (len(log_data) - starts).astype(np.float64)
    spread = suffix_log_sums[starts] - n * log_data[starts]
    flat = spread <= _FLAT_TAIL * n
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + ((n - 1.0) if bias_corrected else n) / spread
    alphas[flat] = np.inf
    return alphas


def _ks_distances(log_data: np.ndarray, starts: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """KS distance max_j |1 − (λ_j/λ_i)^(1−α_i) − (j−i)/n_i| of each tail data[i:], i in starts.

    Works on a candidates × eigenvalues grid, a few rows at a time so that each chunk only
    spans the columns its tails reach; (λ_j/λ_i)^(1−α) is exp((1−α)(ln λ_j − ln λ_i)) and
    entries with j < i are masked out.
    """
    size = len(log_data)
    distances = np.ones(len(starts))
    # WeightWatcher leaves D = 1 where alpha ≤ 1. An infinite alpha (a tail of equal
    # eigenvalues) is no fit either; WeightWatcher would give it D = (n−1)/n, which never wins
    # against a real fit of the same spectrum.
    valid = np.flatnonzero((alphas > 1.0) & np.isfinite(alphas))
    valid = valid[np.argsort(starts[valid], kind="stable")]
    rows_per_chunk = int(np.clip(_CHUNK_ELEMENTS // size, 1, _ROWS_PER_CHUNK))
    for first in range(0, len(valid), rows_per_chunk):
        rows = valid[first:first + rows_per_chunk]
        start = starts[rows][:, None]
        lowest = int(start.min())
        positions = np.arange(lowest, size)[None, :]
        n = (size - start).astype(np.float64)
        exponent = (1.0 - alphas[rows][:, None]) * (log_data[None, lowest:] - log_data[start])
        with np.errstate(over="ignore"):  # only masked entries (j < i) can overflow
            gap = np.abs(np.expm1(exponent) + (positions - start) / n)
        gap[positions < start] = 0.0  # |gap| ≥ 0, so masked entries never win
        distances[rows] = gap.max(axis=1)
    return distances


def _fit_from_candidates(data: np.ndarray, starts: np.ndarray, alphas: np.ndarray,
                         distances: np.ndarray, choice: int) -> PowerLawFit:
    start = int(starts[choice])
    n_tail = len(data) - start
    alpha = float(alphas[choice])
    return PowerLawFit(alpha=alpha, xmin=float(data[start]), D=float(distances[choice]),
                       sigma=(alpha - 1.0) / np.sqrt(n_tail), num_tail=n_tail)


def _fit_ks(data: np.ndarray, log_data: np.ndarray) -> PowerLawFit:
    starts = np.arange(len(data) - 1)
    alphas = _tail_alphas(log_data, starts, bias_corrected=False)
    distances = _ks_distances(log_data, starts, alphas)
    return _fit_from_candidates(data, starts, alphas, distances, int(np.argmin(distances)))


def _fit_ks_small(data: np.ndarray, log_data: np.ndarray) -> PowerLawFit | None:
    """WeightWatcher 0.7.7's small-N fit, as it behaves: bias-corrected alpha 1 + (n−1)/Σ ln(λ/xmin)
    on tails of at least 8 eigenvalues, and the xmin of smallest KS distance among them.

    Its code also scores tails by D − 0.868/√n, but WWFit's constructor then re-picks xmin by
    the smallest D, which is what it reports; that is what is reproduced here.
    """
    starts = np.arange(len(data) - 1)
    n_tail = (len(data) - starts).astype(np.float64)
    alphas = _tail_alphas(log_data, starts, bias_corrected=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = (n_tail - 1.0) / (alphas - 1.0)
    usable = (n_tail >= _SMALL_N_MIN_TAIL) & (spread > 1e-12) & (alphas > 1.0)
    if not usable.any():
        # Too few eigenvalues for any tail of 8: no meaningful fit.
        return None
    distances = np.ones(len(starts))
    distances[usable] = _ks_distances(log_data, starts[usable], alphas[usable])
    return _fit_from_candidates(data, starts, alphas, distances, int(np.argmin(distances)))


def _fit_median(data: np.ndarray, log_data: np.ndarray) -> PowerLawFit:
    # TempBalance / AlphaDecay "xmin_mid": the tail starts at index N // 2.
    starts = np.array([len(data) // 2])
    alphas = _tail_alphas(log_data, starts, bias_corrected=False)
    distances = _ks_distances(log_data, starts, alphas)
    return _fit_from_candidates(data, starts, alphas, distances, 0)


def _fit_peak(data: np.ndarray, log_data: np.ndarray) -> PowerLawFit:
    """AlphaPruning / AlphaLoRA "xmin_peak": scan xmin in [0.95, 1.5] × the ESD's log-peak.

    Their code compares xmin against log10(0.95·peak), which makes the lower bound almost never
    bind; here the window is applied as the method describes it, on the eigenvalue scale.
    """
    counts, edges = np.histogram(np.log10(data), bins=100)
    peak = 10.0 ** edges[int(np.argmax(counts))]
    candidates = data[:-1]
    starts = np.flatnonzero((candidates >= 0.95 * peak) & (candidates <= 1.5 * peak))
    if len(starts) == 0:  # a sparse histogram can leave the window empty: nearest eigenvalue
        starts = np.array([int(np.argmin(np.abs(candidates - peak)))])
    alphas = _tail_alphas(log_data, starts, bias_corrected=False)
    distances = _ks_distances(log_data, starts, alphas)
    return _fit_from_candidates(data, starts, alphas, distances, int(np.argmin(distances)))


def fit_power_law(eigenvalues: np.ndarray, estimator: str = "ks") -> PowerLawFit | None:
    """Fit a power law to the tail of ``eigenvalues`` (any order); None if fewer than two
    eigenvalues lie above :data:`EVALS_THRESHOLD` or no tail has two distinct values."""
    check_estimator(estimator)
    data = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    data = data[data > EVALS_THRESHOLD]
    if len(data) < 2:
        return None
    log_data = np.log(data)
    if estimator == "median":
        fit = _fit_median(data, log_data)
    elif estimator == "peak":
        fit = _fit_peak(data, log_data)
    elif len(data) < SMALL_N_CUTOFF:
        fit = _fit_ks_small(data, log_data)
    else:
        fit = _fit_ks(data, log_data)
    # A tail of equal eigenvalues (an orthogonal matrix, say) has infinite alpha: no power law.
    return fit if fit is not None and np.isfinite(fit.alpha) and fit.alpha > 1.0 else None
