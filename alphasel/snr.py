"""Spectrum's signal-to-noise ratio of a weight matrix (Hartford et al., the layer selection
integrated in axolotl), from the eigenvalues the analyzer already has: no second
decomposition."""

from __future__ import annotations

import math

import numpy as np

# The interquartile range of a normal distribution in standard deviations (Spectrum's σ).
_IQR_PER_SIGMA = 1.349


def marchenko_pastur_snr(evals: np.ndarray, shape: tuple[int, int]) -> float:
    """Spectrum's signal-to-noise ratio (Hartford et al., cognitivecomputations/spectrum) of a
    matrix of ``shape`` from the eigenvalues of its WᵀW: singular values s = √λ, noise scale
    σ = IQR(s) / 1.349 (linear interpolation between order statistics, as ``torch.quantile``
    and ``np.quantile`` do by default), edge σ(1 + √β) with β = smaller / larger side, then
    Σ s above the edge / Σ s at or below it, divided by the largest s.

    No noise (nothing at or below the edge, or only zeros there) gives ``inf``, as Spectrum's
    published SNR tables hold for such weights. Spectrum's code since April 2025 divides by a
    noise of 1 instead when nothing is at or below the edge, which happens when the singular
    values spread little against their size (an orthogonal matrix; a Gaussian one with
    β ≲ 0.27, since the edge has no √(larger side) factor).
    Computed in float64 from the float64 eigenvalues; it agrees with Spectrum's float32 SVD to
    a few parts in 10⁷. It scales as 1/c with the weights (W → cW): compare within a kind.
    """
    singular = np.sqrt(np.maximum(evals, 0.0))  # eigensolver round-off can dip below zero
    lower, upper = np.quantile(singular, [0.25, 0.75])
    edge = (upper - lower) / _IQR_PER_SIGMA * (1 + math.sqrt(min(shape) / max(shape)))
    noise = float(np.sum(singular[singular <= edge]))
    if noise == 0:
        return math.inf
    return float(np.sum(singular[singular > edge])) / noise / float(np.max(singular))
