"""Two LAPACK/BLAS routines numpy does not expose, called in the OpenBLAS numpy itself ships.

- ``dsyrk`` accumulates a Gram matrix slice by slice in place (C += PᵀP), where numpy's
  ``Pᵀ @ P`` (itself a syrk) needs a product buffer, a symmetrising pass and an addition per
  slice: 11008×4096 on one thread 3.8–4.3 s against 4.9–5.1 s.
- ``dsyevd_2stage`` (eigenvalues only) reduces to tridiagonal form in two stages, the first in
  BLAS-3; at n = 4096 on one thread it took 4.9 s against numpy's ``syevd`` 7.3 s, eigenvalues
  equal to 1.5e-14 of the largest (measured on this project's 2-core CI machine).

Both are found by symbol in the OpenBLAS library numpy has loaded (threadpoolctl names its
file), so no second BLAS is loaded and the BLAS thread limits set through threadpoolctl apply.
ctypes releases the GIL during the calls, so analysis workers run them side by side. Where
numpy uses another BLAS (MKL, Accelerate) or the symbols are missing, :func:`routines` is None
and :mod:`alphasel.spectra` falls back to numpy's matmul and ``eigvalsh``; setting
``ALPHASEL_LAPACK=numpy`` forces that fallback.

The same library's per-thread thread count lets :class:`CoreShare` give each worker's calls
the cores the others leave free.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_info

_COL_MAJOR, _UPPER, _NO_TRANS, _TRANS = 102, 121, 111, 112  # CBLAS / LAPACKE enum values
# (symbol suffix, integer type) of the ILP64 build numpy ships, then of an LP64 build.
_BUILDS = (("64_", ctypes.c_int64), ("", ctypes.c_int32))
_PREFIXES = ("scipy_", "")


@dataclass(frozen=True)
class Routines:
    name: str
    syrk: ctypes._CFuncPtr
    syevd_2stage: ctypes._CFuncPtr
    set_local_threads: ctypes._CFuncPtr | None
    """openblas_set_num_threads_local (OpenBLAS ≥ 0.3.27): BLAS threads of the calling thread."""

    def accumulate_gram(self, gram: np.ndarray, part: np.ndarray, tall: bool) -> None:
        """``gram += partᵀ·part`` (``tall``) or ``part·partᵀ``, into gram's lower triangle.

        ``part`` is a C-ordered float64 block; read column-major it is partᵀ, so the column-major
        upper triangle that dsyrk fills is the C-order lower triangle.
        """
        rows, cols = part.shape
        if tall:  # gram (cols×cols) = partᵀ part = Pᶜ Pᶜᵀ with Pᶜ the cols×rows column-major view
            self.syrk(_COL_MAJOR, _UPPER, _NO_TRANS, cols, rows, 1.0, part.ctypes.data, cols,
                      1.0, gram.ctypes.data, cols)
        else:  # gram (rows×rows) = part partᵀ = Pᶜᵀ Pᶜ
            self.syrk(_COL_MAJOR, _UPPER, _TRANS, rows, cols, 1.0, part.ctypes.data, cols,
                      1.0, gram.ctypes.data, rows)

    def eigvalsh_lower(self, gram: np.ndarray) -> np.ndarray:
        """Ascending eigenvalues of the symmetric matrix in ``gram``'s C-order lower triangle;
        ``gram`` is overwritten."""
        size = gram.shape[0]
        values = np.empty(size, dtype=np.float64)
        info = self.syevd_2stage(_COL_MAJOR, b"N", b"U", size, gram.ctypes.data, size,
                                 values.ctypes.data)
        if info != 0:
            raise np.linalg.LinAlgError(f"dsyevd_2stage failed (info={info})")
        return values


def _bind(library: ctypes.CDLL) -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    for suffix, integer in _BUILDS:
        for prefix in _PREFIXES:
            try:
                syrk = getattr(library, f"{prefix}cblas_dsyrk{suffix}")
                syevd = getattr(library, f"{prefix}LAPACKE_dsyevd_2stage{suffix}")
            except AttributeError:
                continue
            syrk.restype = None
            syrk.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer,
                             ctypes.c_double, ctypes.c_void_p, integer, ctypes.c_double,
                             ctypes.c_void_p, integer]
            syevd.restype = integer
            syevd.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, integer,
                              ctypes.c_void_p, integer, ctypes.c_void_p]
            return syrk, syevd
    return None


@functools.cache
def routines() -> Routines | None:
    """dsyrk and dsyevd_2stage from numpy's own OpenBLAS, or None (see the module docstring)."""
    if os.environ.get("ALPHASEL_LAPACK", "").lower() == "numpy":
        return None
    np.linalg.eigvalsh(np.eye(2))  # make sure numpy's BLAS is loaded before looking for it
    libraries = [info for info in threadpool_info() if info.get("internal_api") == "openblas"]
    # numpy's own first; another OpenBLAS (scipy's) is still one threadpoolctl controls.
    libraries.sort(key=lambda info: "numpy" not in info.get("filepath", ""))
    for info in libraries:
        try:
            library = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        bound = _bind(library)
        if bound is not None:
            try:
                local = library.openblas_set_num_threads_local
                local.argtypes, local.restype = [ctypes.c_int], ctypes.c_int
            except AttributeError:
                local = None
            return Routines(f"openblas {info.get('version')} dsyrk + dsyevd_2stage", *bound,
                            local)
    return None


class CoreShare:
    """Shares the cores among analysis workers' BLAS calls on large matrices.

    Eigensolves run side by side, one BLAS thread each: the two-stage solver is one call that
    a second thread speeds up at only ~80% efficiency. Gram matrices are formed one at a time,
    each slice on every core no eigensolve holds at that moment. So a large matrix never
    runs on one thread while cores idle: of q_proj + up_proj (Llama-2-7B, 2 cores), up_proj's
    Gram matrix takes both cores, then its eigensolve one while q_proj's Gram matrix takes the
    other. Needs OpenBLAS's per-thread thread count; without it :meth:`active` is False and
    the analyzer's fixed workers × threads apply.
    """

    def __init__(self, cores: int, threads: int) -> None:
        """``threads``: what a worker's BLAS calls use outside these sections."""
        lapack = routines()
        self._set = lapack.set_local_threads if lapack is not None else None
        self.cores, self.threads = cores, threads
        self._gram = threading.Lock()
        self._count = threading.Lock()
        self._eigensolves = 0

    @property
    def active(self) -> bool:
        return self._set is not None

    @contextmanager
    def gram(self) -> Iterator[None]:
        with self._gram:
            try:
                yield
            finally:
                self._set(self.threads)

    def gram_slice(self) -> None:
        """Before each Gram slice: take every core no eigensolve holds now."""
        self._set(max(1, self.cores - self._eigensolves))

    @contextmanager
    def eigensolve(self) -> Iterator[None]:
        with self._count:
            self._eigensolves += 1
        self._set(1)
        try:
            yield
        finally:
            with self._count:
                self._eigensolves -= 1
            self._set(self.threads)
