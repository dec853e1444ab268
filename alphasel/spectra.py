"""Eigenvalues of WᵀW (squared singular values, no 1/N normalisation) and submatrix sampling.

The eigenvalues come from the smaller Gram matrix (WᵀW or WWᵀ, which share their non-zero
spectrum) with a symmetric eigensolver: several times cheaper than an SVD of W, and in float64
its eigenvalues agree with WeightWatcher's squared singular values to ~1e-14 of the largest.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

import numpy as np
import torch

from alphasel.errors import AnalysisOptionError
from alphasel.lapack import CoreShare, routines

DEVICES = ("cpu", "cuda")
# The device spellings accepted: torch.device refuses "cuda:" or "cuda:00" too, but only once a
# worker thread reaches it, so they are refused here, before any work.
_DEVICE_FORM = re.compile(r"cpu|cuda(:(0|[1-9][0-9]*))?")
# Elements converted to float64 at a time when forming a Gram matrix (64 MB).
_GRAM_CHUNK_ELEMENTS = 8 * 1024 * 1024
# Below this Gram size numpy is as fast as the OpenBLAS routines (one thread, this machine:
# two-stage no gain at n ≤ 1536; dsyrk 0.42 s against matmul's 0.39 s on 49152×576, 1.37 s
# against 1.58 s on 4096×4096), so small matrices keep matmul and syevd.
_LAPACK_MIN_SIZE = 2048


class NonFiniteError(ArithmeticError):
    """The matrix has NaN or inf entries (or so large that its Gram matrix overflows)."""


def check_device(device: str) -> str:
    """``cpu`` (numpy and LAPACK), ``cuda`` or ``cuda:N`` (torch on that GPU; N a plain GPU
    index), in exactly that spelling."""
    if not isinstance(device, str) or not _DEVICE_FORM.fullmatch(device):
        raise AnalysisOptionError(f"unknown device {device!r}: choose one of "
                                  f"{', '.join(DEVICES)} or cuda:N (N a GPU index: 0, 1, ...)")
    kind, _, index = device.partition(":")
    if kind == "cuda" and not torch.cuda.is_available():
        raise AnalysisOptionError(f"--device {device} was asked for but torch sees no CUDA "
                                  "device: drop --device or install a CUDA build of torch")
    if index and int(index) >= torch.cuda.device_count():
        raise AnalysisOptionError(f"--device {device}: torch sees only "
                                  f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def gram_matrix(matrix: np.ndarray,
                before_slice: Callable[[], None] | None = None) -> np.ndarray:
    """The smaller Gram matrix (WᵀW or WWᵀ) in float64; only its lower triangle (C order) is
    guaranteed, the upper one may be left zero (eigensolvers here read the lower one).

    Accumulated over float64 slices of the longer side, so no float64 copy of a large matrix is
    made: with dsyrk into the Gram matrix itself where :mod:`alphasel.lapack` finds it, else
    with numpy's matmul. Both release the GIL, so workers form Gram matrices
    side by side (scipy's BLAS wrappers hold it: two threads ran no faster than one).
    ``before_slice`` runs before each slice's BLAS call (a :class:`CoreShare` sets the
    thread's BLAS threads there).
    """
    tall = matrix.shape[0] >= matrix.shape[1]
    side, length = min(matrix.shape), max(matrix.shape)
    step = max(1, _GRAM_CHUNK_ELEMENTS // side)
    lapack = routines() if side >= _LAPACK_MIN_SIZE else None
    if lapack is None and length <= step:  # one slice: no accumulation needed
        part = np.asarray(matrix, dtype=np.float64)
        return part.T @ part if tall else part @ part.T
    gram = np.zeros((side, side), dtype=np.float64)
    product = None if lapack is not None else np.empty_like(gram)
    for first in range(0, length, step):
        part = matrix[first:first + step] if tall else matrix[:, first:first + step]
        part = np.ascontiguousarray(part, dtype=np.float64)
        if before_slice is not None:
            before_slice()
        if lapack is not None:
            lapack.accumulate_gram(gram, part, tall)
            continue
        np.matmul(part.T, part, out=product) if tall else np.matmul(part, part.T, out=product)
        gram += product
    return gram


def working_bytes(shape: tuple[int, int]) -> int:
    """Memory one matrix of this shape holds at its peak in an analysis: the float32 matrix and
    the half-precision read it came from, the float64 Gram matrix and an eigensolver copy of
    it (numpy's eigvalsh; the two-stage solver works in place), one float64 slice."""
    rows, cols = shape
    side = min(shape)
    return 6 * rows * cols + 16 * side * side + 8 * min(rows * cols, _GRAM_CHUNK_ELEMENTS)


def device_working_bytes(shape: tuple[int, int]) -> int:
    """Device memory one matrix of this shape holds at its peak on the GPU path
    (:func:`torch_eigenvalues`): its copy in stored precision, counted as float32 (what sources
    hand over unless the checkpoint is half precision), the float64 Gram matrix, the
    eigensolver's copy of it and its workspace (counted as one more Gram matrix, above what
    cuSOLVER's syevd asks for), one float64 slice."""
    rows, cols = shape
    side = min(shape)
    return 4 * rows * cols + 24 * side * side + 8 * min(rows * cols, _GRAM_CHUNK_ELEMENTS)


def eigensolver() -> str:
    """Which routines compute CPU eigenvalues here (part of the result cache's key)."""
    lapack = routines()
    return lapack.name if lapack is not None else f"numpy {np.__version__} matmul + syevd"


def eigenvalues(matrix: torch.Tensor | np.ndarray, device: str = "cpu") -> np.ndarray:
    """Ascending eigenvalues of WᵀW for a 2-D ``matrix``, computed in float64.

    float64 decides the fit: the KS scan compares every eigenvalue above 1e-5, and a float32
    Gram matrix perturbs the small ones by ~1e-7 of the largest, enough to move xmin.
    Raises :class:`NonFiniteError` when the Gram matrix is not finite (NaN/inf weights).
    """
    if device != "cpu":
        return torch_eigenvalues(torch.as_tensor(matrix), torch.device(device))
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu()
        if matrix.dtype not in (torch.float32, torch.float64):  # numpy has no bfloat16
            matrix = matrix.float()
        matrix = matrix.numpy()
    return gram_eigenvalues(gram_matrix(matrix))


def gram_eigenvalues(gram: np.ndarray, share: CoreShare | None = None) -> np.ndarray:
    """Ascending eigenvalues of a :func:`gram_matrix` (read from its lower triangle; a large
    one is overwritten). ``share``: the eigensolve takes one core of it (see CoreShare)."""
    _check_finite(gram)
    lapack = routines()
    if lapack is None or gram.shape[0] < _LAPACK_MIN_SIZE:
        # numpy's eigvalsh (LAPACK syevd, lower triangle) releases the GIL, so workers'
        # eigensolves run in parallel.
        return np.linalg.eigvalsh(gram, UPLO="L")
    if share is None or not share.active:
        return lapack.eigvalsh_lower(gram)
    with share.eigensolve():
        return lapack.eigvalsh_lower(gram)


def shares_cores(shape: tuple[int, int], share: CoreShare | None) -> bool:
    """Whether a matrix of this shape goes through ``share`` (large ones, with the OpenBLAS
    routines and their per-thread thread count)."""
    return share is not None and share.active and min(shape) >= _LAPACK_MIN_SIZE


def _check_finite(gram: np.ndarray) -> None:
    # A NaN or inf weight always reaches the Gram diagonal, and |G_ij| ≤ √(G_ii G_jj), so the
    # diagonal alone says whether the whole Gram matrix is finite.
    if not np.isfinite(np.diagonal(gram)).all():
        raise NonFiniteError


def torch_eigenvalues(matrix: torch.Tensor, device: torch.device) -> np.ndarray:
    """:func:`eigenvalues` on a torch device (the GPU path): the matrix travels in its stored
    precision (bf16/fp16 is half the bytes), and its Gram matrix is accumulated there over
    float64 slices of the longer side, as :func:`gram_matrix` does, so the device never holds
    a float64 copy of the whole matrix (see :func:`device_working_bytes`)."""
    weights = matrix.to(device)
    tall = weights.shape[0] >= weights.shape[1]
    step = max(1, _GRAM_CHUNK_ELEMENTS // min(weights.shape))
    gram = None
    for first in range(0, max(weights.shape), step):
        part = weights[first:first + step] if tall else weights[:, first:first + step]
        part = part.to(torch.float64)
        left, right = (part.T, part) if tall else (part, part.T)
        gram = left @ right if gram is None else gram.addmm_(left, right)
    del weights, part, left, right  # only the Gram matrix stays for the eigensolver
    if not bool(torch.isfinite(torch.diagonal(gram)).all()):
        raise NonFiniteError
    return torch.linalg.eigvalsh(gram).cpu().numpy()


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
