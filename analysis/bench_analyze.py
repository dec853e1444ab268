"""Benchmark: alphasel against WeightWatcher 0.7.7 on the same model, in one run.

    python -m analysis.bench_analyze                      # SmolLM2 (GGUF), plus the RSS check
    python -m analysis.bench_analyze --model minilm --rss-gb 0
    python -m analysis.bench_analyze --shape llama-2-7b            # one synthetic 7B block
    python -m analysis.bench_analyze --shape llama-2-7b --full-model \
        --downsample fixed:1024x1024 --samples 3 --slice-blocks 4 --keep /tmp/llama7b
    python -m analysis.bench_analyze --shape llama-2-7b --device cuda      # on a GPU machine
    python -m analysis.bench_analyze --shape llama-2-7b --full-model --device cuda

Prints, from this run only (each timing the fastest of --repeats):
- end-to-end time of `alphasel.analyze` (file → table, never from the result cache) and of
  WeightWatcher's `analyze()` on the model built by transformers (its model loading timed
  separately), and their ratios;
- the bare eigendecomposition floor: the same matrices, already in memory, through
  `spectra.eigenvalues` with the analyzer's own parallelism; alphasel's overhead above it;
- the largest relative alpha/xmin difference between the two tables;
- the cost of the table's ``snr`` column: Spectrum's SNR computed from every matrix's
  eigenvalues (the analyzer's own call), against the whole analysis;
- peak RSS of a separate process analysing a generated multi-GB safetensors checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from alphasel import analyze
from alphasel.sources import open_source, packaged_model
from alphasel.spectra import eigenvalues
from analysis.bench_scale import analyze_in_child, run_block, run_full
from analysis.synthetic_llama import LLAMA_2_7B, block_shapes


def _weightwatcher_model(alias: str) -> torch.nn.Module:
    from transformers import AutoModel

    path, _ = packaged_model(alias)
    if path.suffix == ".gguf":
        return AutoModel.from_pretrained(path.parent, gguf_file=path.name)
    return AutoModel.from_pretrained(path)


def _best_of(repeats: int, work):
    """(fastest wall time, result) over ``repeats`` runs: this 2-core machine's timings swing
    by tens of percent from run to run, the fastest is the least disturbed."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def _eigen_floor(alias: str, workers: int) -> tuple[float, int]:
    seconds, spectra = _spectra(alias, workers)
    return seconds, len(spectra)


def _spectra(alias: str, workers: int) -> tuple[float, list[tuple[np.ndarray, tuple]]]:
    """(seconds of the bare eigendecompositions, each matrix's eigenvalues and shape)."""
    with open_source(alias) as source:
        matrices = [source.load(ref) for ref in source.matrices() if min(ref.shape) >= 10]
    with threadpool_limits(limits=1), ThreadPoolExecutor(workers) as pool:
        started = time.perf_counter()
        evals = list(pool.map(eigenvalues, matrices))
        seconds = time.perf_counter() - started
    return seconds, [(values, matrix.shape) for values, matrix in zip(evals, matrices,
                                                                       strict=True)]


def _snr_seconds(spectra: list[tuple[np.ndarray, tuple]], repeats: int) -> float:
    """The fastest of ``repeats`` passes of the analyzer's SNR call over every spectrum."""
    from alphasel.snr import marchenko_pastur_snr

    return _best_of(repeats, lambda: [marchenko_pastur_snr(values, shape)
                                      for values, shape in spectra])[0]


def _max_relative(ours, reference, prefix: str, column: str) -> float:
    reference = reference.assign(name=prefix + reference["longname"]).set_index("name")
    ours = ours.set_index("name")
    shared = reference.index.intersection(ours.index)
    diff = np.abs(ours.loc[shared, column] - reference.loc[shared, column])
    return float((diff / np.abs(reference.loc[shared, column])).max())


def _write_checkpoint(folder: Path, gigabytes: float) -> Path:
    """A float32 safetensors checkpoint of about ``gigabytes`` (random weights), written shard
    by shard so the writer's memory stays small: a Llama-7B-sized embedding (32000×4096,
    512 MB), one full Llama-7B block (4096-wide Gram matrices, the costliest to hold), and
    filler blocks of 11008×1024 / 1024×11008 matrices, wide so the eigensolves stay cheap while
    the bytes read are those of a multi-GB model."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    llama_block = block_shapes(LLAMA_2_7B["hidden"], LLAMA_2_7B["intermediate"])
    filler = {"mlp.up_proj": (11008, 1024), "mlp.down_proj": (1024, 11008)}
    shards = {"embed": {"model.embed_tokens": (32000, 4096)},
              "block-0": {f"model.layers.0.{name}": shape for name, shape in llama_block.items()}}
    written = sum(r * c for shard in shards.values() for r, c in shard.values()) * 4
    per_filler = sum(r * c for r, c in filler.values()) * 4
    for block in range(1, 1 + max(0, int((gigabytes * 1e9 - written) // per_filler))):
        shards[f"block-{block}"] = {f"model.layers.{block}.{name}": shape
                                    for name, shape in filler.items()}
    for shard, shapes in shards.items():
        save_file({f"{name}.weight": torch.randn(shape, generator=generator)
                   for name, shape in shapes.items()}, folder / f"model-{shard}.safetensors")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "minilm"])
    parser.add_argument("--rss-gb", type=float, default=3.0,
                        help="size of the generated checkpoint for the RSS check (0: skip)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each timing; the fastest is reported")
    parser.add_argument("--shape", choices=["llama-2-7b"],
                        help="instead of --model: synthetic bf16 checkpoints of this shape "
                        "(analysis/bench_scale.py)")
    parser.add_argument("--blocks", type=int, default=1, help="blocks to build (--shape)")
    parser.add_argument("--no-weightwatcher", action="store_true",
                        help="--shape: skip WeightWatcher on q_proj + up_proj")
    parser.add_argument("--full-model", action="store_true",
                        help="--shape: the whole model (all blocks, embeddings, LM head)")
    parser.add_argument("--downsample", default="none", help="--full-model: e.g. fixed:1024x1024")
    parser.add_argument("--samples", type=int, default=1, help="--full-model: draws per matrix")
    parser.add_argument("--slice-blocks", type=int, default=0,
                        help="--full-model: also the float64 analysis of this many blocks "
                        "(and the embedding and head), extrapolated to the whole model")
    parser.add_argument("--device", default="cpu",
                        help="--shape: cpu, or cuda (block: compared with the CPU path)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="--shape: build the checkpoint in DIR and keep it (reused if there)")
    args = parser.parse_args()
    if args.shape:
        _scale(args)
        return
    workers = min(os.cpu_count() or 1, 4)
    print(f"model {args.model}; {os.cpu_count()} cores; alphasel workers {workers}; "
          f"fastest of {args.repeats} runs per timing")
    # First, while this process is small: a forked child starts with its parent's resident
    # pages, which its peak RSS would count until it execs.
    if args.rss_gb > 0:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            folder = _write_checkpoint(Path(tmp), args.rss_gb)
            size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9
            result, _ = analyze_in_child(folder)
            peak_mb, elapsed = result["peak_rss_mb"], result["elapsed_s"]
        print(f"peak RSS analysing a {size:.2f} GB checkpoint   {peak_mb:7.0f} MB "
              f"({elapsed:.1f} s; largest matrix 32000x4096 float32 = 524 MB, Gram up to 4096²)")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    import weightwatcher

    analyze(torch.nn.Sequential(torch.nn.Linear(32, 32)), progress=False)  # warm imports

    ours_s, ours = _best_of(args.repeats, lambda: analyze(args.model, progress=False, cache=False))
    floor_s, fitted = min(_eigen_floor(args.model, workers) for _ in range(args.repeats))
    # The same with one worker (which the analyzer gives every core's BLAS threads) against
    # the one-thread floor.
    single_s, _ = _best_of(args.repeats,
                           lambda: analyze(args.model, progress=False, workers=1, cache=False))
    single_floor_s, _ = min(_eigen_floor(args.model, 1) for _ in range(args.repeats))
    snr_s = _snr_seconds(_spectra(args.model, workers)[1], args.repeats)

    started = time.perf_counter()
    model = _weightwatcher_model(args.model)
    load_s = time.perf_counter() - started
    ww_s, reference = _best_of(args.repeats,
                               lambda: weightwatcher.WeightWatcher(model=model).analyze())
    with threadpool_limits(limits=1):
        ww_single_s, _ = _best_of(args.repeats,
                                  lambda: weightwatcher.WeightWatcher(model=model).analyze())

    prefix = "model." if args.model == "smollm2" else ""
    print(f"alphasel analyze (file → table)          {ours_s:7.2f} s   {len(ours)} rows")
    print(f"bare eigendecomposition floor            {floor_s:7.2f} s   {fitted} matrices, "
          f"{1e3 * floor_s / fitted:.1f} ms each")
    print(f"alphasel overhead above the floor        {100 * (ours_s / floor_s - 1):6.1f} %   "
          f"({1e3 * ours_s / fitted:.1f} ms per matrix)")
    print(f"  with 1 worker ({os.cpu_count()} BLAS threads): {single_s:.2f} s against a "
          f"one-thread floor of {single_floor_s:.2f} s "
          f"({single_s / single_floor_s:.2f}x)")
    print(f"snr column (Spectrum's SNR, same evals)  {snr_s:7.3f} s   "
          f"{100 * snr_s / ours_s:.2f} % of the analysis ({1e3 * snr_s / fitted:.2f} ms per "
          "matrix, one thread)")
    print(f"WeightWatcher analyze() (default BLAS)   {ww_s:7.2f} s   {len(reference)} rows")
    print(f"WeightWatcher analyze() (BLAS 1 thread)  {ww_single_s:7.2f} s")
    print(f"transformers model load for WW           {load_s:7.2f} s")
    print(f"speed-up vs WW analyze() alone           {ww_s / ours_s:6.2f} x")
    print(f"speed-up vs WW analyze(), 1 BLAS thread  {ww_single_s / ours_s:6.2f} x")
    print(f"speed-up vs WW incl. its model load      {(ww_s + load_s) / ours_s:6.2f} x")
    for column in ("alpha", "xmin"):
        print(f"max relative {column} difference           "
              f"{_max_relative(ours, reference, prefix, column):.2e}")


def _scale(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        folder = args.keep or Path(tmp) / args.shape
        if args.full_model:
            run_full(folder, args.downsample, args.samples, args.slice_blocks, args.device)
        else:
            run_block(folder, args.blocks, not args.no_weightwatcher, args.device)


if __name__ == "__main__":
    main()
