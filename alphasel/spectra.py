"""Eigenvalues of WᵀW (squared singular values, no 1/N normalisation) and submatrix sampling.

The eigenvalues come from the smaller Gram matrix (WᵀW or WWᵀ, which share their non-zero
spectrum) with a symmetric eigensolver: several times cheaper than an SVD of W, and in float64
its eigenvalues agree with WeightWatcher's squared singular values to ~1e-14 of the largest.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from alphasel.errors import AnalysisOptionError

DEVICES = ("cpu", "cuda")
# Elements converted to float64 at a time when forming a Gram matrix (64 MB).
_GRAM_CHUNK_ELEMENTS = 8 * 1024 * 1024


class NonFiniteError(ArithmeticError):
    """The matrix has NaN or inf entries (or so large that its Gram matrix overflows)."""


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise AnalysisOptionError(f"unknown device '{device}': choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise AnalysisOptionError("--device cuda was asked for but torch sees no CUDA device: "
                                  "drop --device or install a CUDA build of torch")
    return device


def gram_matrix(matrix: np.ndarray) -> np.ndarray:
    """The smaller Gram matrix (WᵀW or WWᵀ) in float64.

    Accumulated over float64 slices of the longer side, so no float64 copy of a large matrix is
    made. numpy's matmul releases the GIL, so workers form Gram matrices side by side (scipy's
    BLAS syrk, half the flops, holds the GIL and ran no faster with two threads than one).
    """
    tall = matrix.shape[0] >= matrix.shape[1]
    side, length = min(matrix.shape), max(matrix.shape)
    step = max(1, _GRAM_CHUNK_ELEMENTS // side)
    if length <= step:  # one slice: no accumulation needed
        part = np.asarray(matrix, dtype=np.float64)
        return part.T @ part if tall else part @ part.T
    gram = np.zeros((side, side), dtype=np.float64)
    product = np.empty_like(gram)
    for first in range(0, length, step):
        part = matrix[first:first + step] if tall else matrix[:, first:first + step]
        part = np.asarray(part, dtype=np.float64)
        np.matmul(part.T, part, out=product) if tall else np.matmul(part, part.T, out=product)
        gram += product
    return gram


def eigenvalues(matrix: torch.Tensor | np.ndarray, device: str = "cpu") -> np.ndarray:
    """Ascending eigenvalues of WᵀW for a 2-D ``matrix``, computed in float64.

    float64 decides the fit: the KS scan compares every eigenvalue above 1e-5, and a float32
    Gram matrix perturbs the small ones by ~1e-7 of the largest, enough to move xmin.
    Raises :class:`NonFiniteError` when the Gram matrix is not finite (NaN/inf weights).
    """
    if device == "cuda":
        weights = torch.as_tensor(matrix).to(device="cuda", dtype=torch.float64)
        gram = weights.T @ weights if weights.shape[0] >= weights.shape[1] else weights @ weights.T
        if not bool(torch.isfinite(gram).all()):
            raise NonFiniteError
        return torch.linalg.eigvalsh(gram).cpu().numpy()
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    gram = gram_matrix(matrix)
    # A NaN or inf weight always reaches the Gram diagonal, so checking the small Gram matrix
    # replaces a pass over the whole weight matrix.
    if not np.isfinite(gram).all():
        raise NonFiniteError
    # numpy's eigvalsh (LAPACK syevd) releases the GIL, so workers' eigensolves run in
    # parallel; scipy.linalg.eigvalsh holds it (measured: two threads no faster than one).
    return np.linalg.eigvalsh(gram)


def sample_generator(seed: int, name: str, draw: int) -> np.random.Generator:
    """A generator for one draw of one matrix: reproducible whatever order matrices come in."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), draw])


def sample_submatrix(matrix: np.ndarray, rows: int, cols: int,
                     generator: np.random.Generator) -> np.ndarray:
    """Rows and columns drawn at random without replacement (kept in their original order)."""
    total_rows, total_cols = matrix.shape
    row_index = np.sort(generator.choice(total_rows, size=rows, replace=False))
    col_index = np.sort(generator.choice(total_cols, size=cols, replace=False))
    return matrix[np.ix_(row_index, col_index)]
