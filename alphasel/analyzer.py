"""ANALYZE: alpha per weight matrix → the alpha table (a pandas DataFrame, see table.py)."""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from alphasel.cache import ResultCache
from alphasel.columns import COLUMNS, DOWNSAMPLE_COLUMNS, META_KEY, STATUS_OK, TOTAL_MATRIX_PARAMS
from alphasel.downsample import (
    NO_DOWNSAMPLING,
    Downsampling,
    parse_downsampling,
    resolve_shape,
    sample_shape_for,
)
from alphasel.errors import AnalysisOptionError
from alphasel.lapack import CoreShare
from alphasel.layout import block_of, kind_of
from alphasel.powerlaw import EVALS_THRESHOLD, check_estimator, fit_power_law
from alphasel.provenance import package_versions, utc_now
from alphasel.snr import marchenko_pastur_snr
from alphasel.sources import MatrixRef, WeightSource, open_source
from alphasel.sources.adapter import AdapterOverlay
from alphasel.spectra import (
    NonFiniteError,
    check_device,
    device_working_bytes,
    eigensolver,
    eigenvalues,
    gram_eigenvalues,
    gram_matrix,
    sample_generator,
    sample_submatrix,
    shares_cores,
    working_bytes,
)

# Share of the RAM available when an analysis starts that its matrices may hold at once.
_MEMORY_SHARE = 0.5
# Share of a GPU's memory free when an analysis starts that its matrices may hold at once: the
# rest stays for the CUDA context's libraries (cuBLAS, cuSOLVER), the caching allocator's
# fragmentation and other processes on the GPU.
_DEVICE_MEMORY_SHARE = 0.8
# Threads that work on the GPU path at once: one reads (and upcasts) the next matrix while
# another's Gram matrix and eigenvalues are on the GPU.
_GPU_WORKERS = 2
# Packages whose versions an analysis records.
_RECORDED_PACKAGES = ("numpy", "scipy", "torch", "pandas", "safetensors", "gguf")
# Packages whose code computes a cached result (eigenvalues, dequantization): a new version of
# one may change the last bits, so it is part of the cache key.
_COMPUTING_PACKAGES = ("alphasel", "numpy", "torch", "gguf")


def _compile(patterns: list[str] | str | None, flag: str) -> list[re.Pattern[str]]:
    if patterns is None:
        return []
    compiled = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise AnalysisOptionError(f"{flag} '{pattern}' is not a valid regular expression "
                                      f"({err})") from err
    return compiled


def select_matrices(refs: list[MatrixRef], include: list[str] | str | None = None,
                    exclude: list[str] | str | None = None) -> list[MatrixRef]:
    """Matrices whose name matches any include regex (all when none) and no exclude regex."""
    includes = _compile(include, "--include")
    excludes = _compile(exclude, "--exclude")
    return [ref for ref in refs
            if (not includes or any(p.search(ref.name) for p in includes))
            and not any(p.search(ref.name) for p in excludes)]


def _spectrum_metrics(evals: np.ndarray, estimator: str, shape: tuple[int, int]) -> dict:
    """Fit, norm and SNR metrics of the spectrum of a matrix of ``shape`` (WeightWatcher's
    definitions, Spectrum's SNR); the norms and SNR also when no tail can be fitted."""
    norm = float(np.sum(evals))
    spectral = float(np.max(evals))
    row = {"log_norm": np.log10(norm), "log_spectral_norm": np.log10(spectral),
           "stable_rank": norm / spectral, "snr": marchenko_pastur_snr(evals, shape)}
    fit = fit_power_law(evals, estimator)
    if fit is None:
        row["status"] = (f"no power-law tail (fewer than 2 distinct eigenvalues above "
                         f"{EVALS_THRESHOLD:g})")
        return row
    row.update(alpha=fit.alpha, xmin=fit.xmin, D=fit.D, sigma=fit.sigma,
               num_pl_spikes=int(np.sum(evals >= fit.xmin)),
               alpha_weighted=fit.alpha * row["log_spectral_norm"], status=STATUS_OK)
    return row


def _non_finite_status(matrix: np.ndarray | torch.Tensor) -> dict:
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().float().numpy()
    bad = int(matrix.size - np.count_nonzero(np.isfinite(matrix)))
    if bad == 0:  # finite entries whose Gram matrix overflows float64
        return {"status": "weights too large: their Gram matrix overflows float64"}
    return {"status": f"non-finite weights ({bad} NaN/inf entries)"}


def analyze_matrix(matrix: np.ndarray | torch.Tensor, name: str, estimator: str = "ks",
                   device: str = "cpu", downsampling: Downsampling = NO_DOWNSAMPLING,
                   gram: np.ndarray | None = None, share: CoreShare | None = None) -> dict:
    """The fit, norm and SNR metrics of one weight matrix, as a row of the alpha table holds them
    (from ``alpha`` on, with ``status``): the one per-matrix code path of every analysis and of
    the alpha measured during training.

    ``matrix`` is float32/64 numpy, or on a torch device path a tensor in its stored
    precision (see :meth:`WeightSource.load_stored`); ``gram``, its Gram matrix when already
    formed (then its eigensolve takes a core of ``share``)."""
    try:
        if downsampling.active:
            return _analyze_samples(matrix, name, estimator, device, downsampling)
        evals = (gram_eigenvalues(gram, share) if gram is not None
                 else _eigenvalues(matrix, name, device))
    except NonFiniteError:
        return _non_finite_status(matrix)
    if evals[-1] <= EVALS_THRESHOLD:
        return {"status": f"all-zero spectrum (no eigenvalue above {EVALS_THRESHOLD:g})"}
    return _spectrum_metrics(evals, estimator, tuple(matrix.shape))


def _eigenvalues(matrix: np.ndarray | torch.Tensor, name: str, device: str) -> np.ndarray:
    """:func:`eigenvalues` on ``device``; a matrix the GPU has no memory left for (another
    process took it, or the budget's estimate fell short) is computed on the CPU instead, to
    the same float64 eigenvalues, rather than ending the analysis."""
    if device == "cpu":
        return eigenvalues(matrix)
    try:
        return eigenvalues(matrix, device)
    except torch.OutOfMemoryError:
        pass  # outside the except block, the failed attempt's device tensors are released
    warnings.warn(f"{name}: out of memory on {device}, its eigenvalues were computed on the CPU "
                  "instead (slower, same result)", stacklevel=3)
    return eigenvalues(matrix)


def _analyze_samples(matrix: np.ndarray, name: str, estimator: str, device: str,
                     downsampling: Downsampling) -> dict:
    """Fit ``downsampling.samples`` submatrices of the sampled shape; average their metrics
    (the SNR of each with the sampled shape's β; a sample without noise makes the mean inf)."""
    if not np.isfinite(matrix).all():  # a sample could miss the bad entries
        raise NonFiniteError
    rows, cols = sample_shape_for(matrix.shape, downsampling.shape)
    fitted = []
    for draw in range(downsampling.samples):
        generator = sample_generator(downsampling.seed, name, draw)
        evals = _eigenvalues(sample_submatrix(matrix, rows, cols, generator), name, device)
        if evals[-1] > EVALS_THRESHOLD:
            metrics = _spectrum_metrics(evals, estimator, (rows, cols))
            if metrics["status"] == STATUS_OK:
                fitted.append(metrics)
    if not fitted:
        return {"status": "no sampled submatrix could be fitted (all-zero or rank too low)",
                "samples": 0}
    row = {key: float(np.mean([draw[key] for draw in fitted]))
           for key in fitted[0] if key != "status"}
    row["num_pl_spikes"] = int(round(row["num_pl_spikes"]))
    alphas = [draw["alpha"] for draw in fitted]
    row["alpha_std"] = float(np.std(alphas, ddof=1)) if len(alphas) > 1 else 0.0
    row["samples"] = len(fitted)
    row["status"] = STATUS_OK
    return row


def analyze(
    model: str | Path | torch.nn.Module,
    estimator: str = "ks",
    *,
    revision: str | None = None,
    include: list[str] | str | None = None,
    exclude: list[str] | str | None = None,
    min_evals: int = 10,
    device: str = "cpu",
    downsample: str = "none",
    samples: int = 1,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    memory_gb: float | None = None,
    adapter: str | Path | None = None,
    cache: bool = True,
) -> pd.DataFrame:
    """Alpha per weight matrix of ``model``: a hub id, local checkpoint (dir, .safetensors,
    .gguf, .bin), the packaged ``smollm2``/``minilm``, or an in-memory ``nn.Module``.

    Returns the alpha table (one row per 2-D weight matrix; see ``alphasel.columns.COLUMNS``) with
    its metadata in ``table.attrs["alphasel"]``. Matrices with fewer than ``min_evals``
    eigenvalues, non-finite entries or an all-zero spectrum get a row whose ``status`` says why.
    ``workers`` matrices are analysed at once, each with ``cores // workers`` BLAS threads;
    by default as many as there are CPU cores, fewer when the largest matrices' working memory
    would not fit ``memory_gb`` (default: half the RAM available at the start), see
    :func:`schedule`. On a CUDA device two matrices are in flight, each also waiting for room
    in a share of the GPU memory free at the start; one the GPU cannot fit after all is
    computed on the CPU, with a warning.
    ``adapter``, a PEFT LoRA/rsLoRA/DoRA adapter directory, replaces each matrix it adapts by
    its effective weight W + ΔW; the table's ``adapted`` column marks those rows.
    ``cache`` reads each matrix's result from the result cache when an identical analysis of
    the same file stored it, and stores the others as they finish (``alphasel.cache``;
    in-memory modules are never cached); ``meta["cached"]`` counts the matrices read back.
    """
    downsampling = _checked_options(estimator, device, min_evals, downsample, samples, seed,
                                    workers, memory_gb)
    started, started_at = time.perf_counter(), utc_now()
    with open_source(model, revision) as base:
        source = AdapterOverlay(base, adapter) if adapter is not None else base
        all_refs = source.matrices()
        refs = select_matrices(all_refs, include, exclude)
        if not refs:
            raise AnalysisOptionError(
                f"no weight matrix of '{source.model_id}' is left to analyze "
                f"({len(all_refs)} found before --include/--exclude): loosen the filters")
        fitted_shapes = {ref.name: ref.shape for ref in refs if min(ref.shape) >= min_evals}
        downsampling = resolve_shape(downsampling, fitted_shapes)
        versions = package_versions(_RECORDED_PACKAGES)
        solver = eigensolver() if device == "cpu" else f"torch {torch.__version__} {device}"
        store = ResultCache() if cache else None
        # The table's columns are in the key: an entry stored before a metric existed lacks
        # it, and must be a miss rather than a row with the metric missing.
        key = {"estimator": estimator, "downsampling": downsampling.describe(),
               "min_evals": min_evals, "device": device, "eigensolver": solver,
               "versions": {name: versions.get(name) for name in _COMPUTING_PACKAGES},
               "columns": COLUMNS + DOWNSAMPLE_COLUMNS}
        limit = int(memory_gb * 1e9) if memory_gb is not None \
            else int(_MEMORY_SHARE * available_memory())
        device_limit = (int(_DEVICE_MEMORY_SHARE * available_device_memory(device))
                        if torch.device(device).type == "cuda" else None)
        plan = schedule(list(fitted_shapes.values()), usable_cores(), limit,
                        workers if device == "cpu" or workers is not None else _GPU_WORKERS,
                        device_limit)
        fits = _MatrixFits(source, estimator, device, downsampling, plan, store, key)
        rows, cached = _fit_all(fits, refs, min_evals, plan, progress)
        meta = {
            "model_id": source.model_id,
            "revision": source.revision,
            "source": source.location,
            "format": source.format,
            "estimator": estimator,
            "min_evals": min_evals,
            "device": device,
            "eigensolver": solver,
            "workers": plan.workers,
            "blas_threads": plan.blas_threads,
            "include": include,
            "exclude": exclude,
            "downsample": downsampling.describe(),
            "adapter": str(adapter) if adapter is not None else None,
            "num_matrices": len(refs),
            TOTAL_MATRIX_PARAMS: int(sum(r.shape[0] * r.shape[1] for r in all_refs)),
            "versions": versions,
            "started": started_at,
            "cache": str(store.folder) if store is not None else None,
            "cached": cached,
        }
        adapted = source.adapted if adapter is not None else None
    table = _table(rows, downsampling, adapted)
    meta["elapsed_s"] = round(time.perf_counter() - started, 3)
    table.attrs[META_KEY] = meta
    return table


def _checked_options(estimator: str, device: str, min_evals: int, downsample: str, samples: int,
                     seed: int, workers: int | None, memory_gb: float | None) -> Downsampling:
    """Refuse a bad option before anything is read; the downsampling the options ask for."""
    check_estimator(estimator)
    check_device(device)
    if isinstance(min_evals, bool) or not isinstance(min_evals, int) or min_evals < 2:
        raise AnalysisOptionError(f"--min-evals must be an integer ≥ 2, got {min_evals!r}")
    downsampling = parse_downsampling(downsample, samples, seed)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise AnalysisOptionError(f"--workers must be ≥ 1, got {workers}")
    if memory_gb is not None and not (isinstance(memory_gb, int | float) and memory_gb > 0):
        raise AnalysisOptionError(f"--memory-gb must be a positive number, got {memory_gb!r}")
    return downsampling


def _table(rows: list[dict], downsampling: Downsampling, adapted: set[str] | None
           ) -> pd.DataFrame:
    """The rows as an alpha table: every column of :data:`COLUMNS` in order (plus the
    downsampling columns, and ``adapted`` over an adapter), whole-number columns nullable."""
    table = pd.DataFrame(rows)
    columns = COLUMNS + (DOWNSAMPLE_COLUMNS if downsampling.active else [])
    if adapted is not None:
        table["adapted"] = table["name"].isin(adapted)
        columns = columns + ["adapted"]
    table = table.reindex(columns=columns)
    table["block"] = table["block"].astype("Int64")
    for column in ("num_pl_spikes",) + (("samples",) if downsampling.active else ()):
        table[column] = table[column].astype("Int64")
    return table


@dataclass(frozen=True)
class Schedule:
    workers: int
    """Matrices analysed at once, each by its own thread."""
    blas_threads: int
    """BLAS threads each worker's Gram matrix and eigensolve use."""
    memory_limit: int
    """Bytes of working memory the matrices in flight may hold together (see
    :func:`working_bytes`); a matrix waits for room before it is read."""
    device_memory_limit: int | None = None
    """On a CUDA device, the bytes of device memory they may hold together there (see
    :func:`device_working_bytes`), which a matrix also waits for; None elsewhere."""

    def limits(self) -> tuple[int, ...]:
        """The limits of each memory the matrices occupy: host RAM, then the device's."""
        if self.device_memory_limit is None:
            return (self.memory_limit,)
        return self.memory_limit, self.device_memory_limit


def schedule(shapes: list[tuple[int, int]], cores: int, memory_limit: int,
             workers: int | None = None, device_memory_limit: int | None = None) -> Schedule:
    """Workers × BLAS threads for matrices of these ``shapes`` on ``cores`` cores.

    One matrix per core, one BLAS thread each, as long as that many of the largest matrices
    fit ``memory_limit`` together: one eigensolve per thread beats one multi-threaded
    eigensolve after another (a synthetic Llama-2-7B block on 2 cores: 30.8 s against 37.1 s
    for the same routines on 2 threads one matrix after another; at SmolLM2's sizes 2×
    faster), since LAPACK's reductions use a second thread at ~80% efficiency. When memory
    admits fewer, each of the fewer workers gets more BLAS threads, so no core idles (the
    analyzer once ran the large matrices one by one on a single thread). Large matrices then
    share the cores as they go (:class:`CoreShare`). An explicit ``workers`` is kept.
    ``device_memory_limit`` bounds the matrices on a GPU as well (see :class:`Schedule`).
    """
    largest = max((working_bytes(shape) for shape in shapes), default=1)
    if workers is None:
        workers = max(1, min(cores, memory_limit // largest, len(shapes)))
    return Schedule(workers, max(1, cores // workers), memory_limit, device_memory_limit)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or Slurm's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int:
    """Bytes of RAM available to new work: MemAvailable on Linux, else physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_device_memory(device: str) -> int:
    """Bytes of memory free on a CUDA ``device`` (``cuda``: the current one), as the driver
    counts them: the model's weights, when they are there, are already taken."""
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return free


def _work_order(refs: list[MatrixRef]) -> list[int]:
    """Indexes of ``refs`` (in reading order) in the order to start them: block by block as
    read, the costliest Gram matrices of a block first, so a block's last matrix is a small
    one and no core idles behind a late large one (longest processing time first)."""
    group = 0
    groups = []
    for index, ref in enumerate(refs):
        if index and block_of(ref.name) != block_of(refs[index - 1].name):
            group += 1
        groups.append(group)
    gram_flops = [ref.shape[0] * ref.shape[1] * min(ref.shape) for ref in refs]
    return sorted(range(len(refs)), key=lambda index: (groups[index], -gram_flops[index]))


class _MemoryBudget:
    """Bounds the bytes of matrices being worked on at once, in each memory they occupy (host
    RAM; on a GPU its memory too): a matrix starts once its cost in each fits beside the others
    in flight. A matrix larger than a whole limit still runs, but alone, so peak memory follows
    the largest matrix, not the model."""

    def __init__(self, limits: tuple[int, ...]) -> None:
        self._limits, self._used = limits, [0] * len(limits)
        self._in_flight, self._closed = 0, False
        self._changed = threading.Condition()

    def _fits(self, costs: tuple[int, ...]) -> bool:
        return all(used + cost <= limit
                   for used, cost, limit in zip(self._used, costs, self._limits, strict=True))

    def acquire(self, costs: tuple[int, ...]) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._in_flight == 0
                                   or self._fits(costs))
            if self._closed:
                raise CancelledError("the analysis stopped")
            self._in_flight += 1
            self._used = [used + cost for used, cost in zip(self._used, costs, strict=True)]

    def close(self) -> None:
        """Wake and refuse every waiting read, so an error stops the remaining work at once."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def release(self, costs: tuple[int, ...]) -> None:
        with self._changed:
            self._in_flight -= 1
            self._used = [used - cost for used, cost in zip(self._used, costs, strict=True)]
            self._changed.notify_all()


class _MatrixFits:
    """Fits one matrix of an analysis, on whichever worker thread calls it.

    A matrix whose key (``key_options`` with the source's identity of the tensor, see
    :meth:`WeightSource.identity`) has an entry in ``store`` is not read at all; every other
    fit is stored the moment it finishes, so an analysis stopped half-way keeps what it did.
    A matrix is read only when its working memory fits the budget beside the others in flight
    (on a CUDA device, in host and in device memory).
    Reads, numpy's dequantization, the Gram matrix and the eigensolvers all release the GIL.
    (A separate reader thread, tried too, only added handoffs: SmolLM2 2.6 s against 2.4 s
    this way.) Large matrices share the cores (:class:`CoreShare`). On a torch device the
    matrix travels in its stored precision and is upcast there, and with two workers one
    thread's read overlaps the other's GPU work.
    """

    def __init__(self, source: WeightSource, estimator: str, device: str,
                 downsampling: Downsampling, plan: Schedule, store: ResultCache | None,
                 key_options: dict) -> None:
        self.source, self.estimator, self.device = source, estimator, device
        self.downsampling, self.store, self.key_options = downsampling, store, key_options
        self.budget = _MemoryBudget(plan.limits())
        self.on_device = plan.device_memory_limit is not None
        self.share = CoreShare(usable_cores(), plan.blas_threads) if device == "cpu" else None
        self.stored_precision = device != "cpu" and not downsampling.active

    def __call__(self, ref: MatrixRef) -> tuple[dict, bool]:
        """(the matrix's metrics, whether they came from the store)."""
        identity = self.source.identity(ref) if self.store is not None else None
        key = {**self.key_options, "name": ref.name, "tensor": identity}
        if identity is not None:
            stored = self.store.get(key)
            if stored is not None:
                return stored, True
        costs = self._costs(ref.shape)
        self.budget.acquire(costs)
        try:
            result = self._fit(ref)
        finally:
            self.budget.release(costs)
        if identity is not None:
            self.store.put(key, result)
        return result, False

    def _costs(self, shape: tuple[int, int]) -> tuple[int, ...]:
        """What a matrix holds in each memory of the budget. Host memory is counted as for the
        CPU path on a GPU too: a matrix the GPU has no room for falls back to it."""
        if not self.on_device:
            return (working_bytes(shape),)
        return working_bytes(shape), device_working_bytes(shape)

    def _fit(self, ref: MatrixRef) -> dict:
        if not self.downsampling.active and shares_cores(ref.shape, self.share):
            # The read is part of the Gram turn, so turns go in the order work started
            # (costliest first), not in the order reads happen to finish.
            with self.share.gram():
                matrix = self.source.load(ref)
                gram = gram_matrix(matrix, self.share.gram_slice)
            return analyze_matrix(matrix, ref.name, self.estimator, self.device,
                                  self.downsampling, gram, self.share)
        matrix = self.source.load_stored(ref) if self.stored_precision else self.source.load(ref)
        return analyze_matrix(matrix, ref.name, self.estimator, self.device, self.downsampling)

    def stop(self) -> None:
        """Refuse every matrix still waiting for memory (the analysis stops)."""
        self.budget.close()


def _fit_all(fits: _MatrixFits, refs: list[MatrixRef], min_evals: int, plan: Schedule,
             progress: bool) -> tuple[list[dict], int]:
    """One row per ref, in order, and how many fits came from the result cache.

    ``plan.workers`` threads each fit matrices with ``plan.blas_threads`` BLAS threads (see
    :func:`schedule`), in :func:`_work_order`; the first error (a corrupt tensor, Ctrl-C)
    stops the rest at once.
    """
    rows, cached = [], 0
    bar = tqdm(total=len(refs), desc=f"alpha {fits.source.model_id}", unit="matrix",
               disable=not progress, dynamic_ncols=True)
    with threadpool_limits(limits=plan.blas_threads), \
            ThreadPoolExecutor(plan.workers, thread_name_prefix="alphasel") as pool:
        # Everything is queued at once, so a slow matrix (an embedding) never idles the other
        # workers; memory stays bounded by the budget, which a matrix acquires before its read
        # and releases after its fit, in the same task.
        pending = {index: pool.submit(fits, refs[index]) for index in _work_order(refs)
                   if min(refs[index].shape) >= min_evals}
        try:
            for index, ref in enumerate(refs):
                row = {"name": ref.name, "block": block_of(ref.name), "kind": kind_of(ref.name),
                       "rows": ref.shape[0], "cols": ref.shape[1], "num_evals": min(ref.shape)}
                if index in pending:
                    result, from_store = pending.pop(index).result()
                    row.update(result)
                    cached += from_store
                else:
                    row["status"] = (f"too few eigenvalues ({min(ref.shape)} < min_evals "
                                     f"{min_evals})")
                rows.append(row)
                bar.update(1)
                bar.set_postfix_str(ref.name[-40:], refresh=False)
        except BaseException:
            fits.stop()
            pool.shutdown(cancel_futures=True)
            raise
    bar.close()
    return rows, cached
