"""The analyzer on Llama-2-7B-shaped matrices (driven by ``python -m analysis.bench_analyze
--shape llama-2-7b``; see there for the commands).

Block mode times, in one run, on a synthetic bf16 block (analysis/synthetic_llama.py):
- alphasel end to end (file → table, no result cache) in a child process, so its peak RSS is
  its own; its time is taken inside the child around ``analyze()`` (no interpreter start);
- the floor the issue defines: each matrix already in memory as float32, float64 Gram matrix
  by numpy matmul + numpy ``eigvalsh``, 2 BLAS threads, one matrix after another; and the same
  with the OpenBLAS routines alphasel uses (dsyrk + dsyevd_2stage), the lowered floor;
- WeightWatcher 0.7.7 ``analyze()`` and alphasel on q_proj + up_proj only;
and checks alphas: alphasel against WeightWatcher (q+up) and against a fit of the floor's
eigenvalues (every matrix).

Full-model mode analyses a whole 7B-shaped checkpoint (32 blocks, embeddings, LM head) with the
given downsampling, and measures a float64 analysis of a few blocks plus the embedding and head
to extrapolate the full float64 analysis.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from alphasel.powerlaw import fit_power_law
from alphasel.sources import open_source
from alphasel.spectra import eigensolver, eigenvalues, torch_eigenvalues
from analysis.synthetic_llama import LLAMA_2_7B, write_llama

_CHILD = """
import json, sys, time
import alphasel
from analysis.bench_scale import gpu_peak_mb, warm_up
kwargs = json.loads(sys.argv[2])
warm_up(kwargs.get("device", "cpu"))
started = time.perf_counter()
table = alphasel.analyze(sys.argv[1], progress=False, cache=False, **kwargs)
elapsed = time.perf_counter() - started
table.to_csv(sys.argv[3], index=False)
meta = table.attrs["alphasel"]
print(json.dumps({"elapsed_s": elapsed, "workers": meta["workers"],
                  "gpu_peak_mb": gpu_peak_mb(meta["device"]),
                  "blas_threads": meta["blas_threads"], "eigensolver": meta["eigensolver"]}))
"""
# Where the child imports this module from, whatever directory the benchmark runs in.
_REPOSITORY = Path(__file__).resolve().parents[1]


def cuda_device(device: str) -> torch.device | None:
    """The CUDA device an analysis' ``device`` names (``cuda:N`` is GPU N; ``cuda``, torch's
    current one), None for the CPU."""
    parsed = torch.device(device)
    return parsed if parsed.type == "cuda" else None


def warm_up(device: str) -> None:
    """Start CUDA on ``device`` before the clock does: its context, cuBLAS and cuSOLVER take
    seconds on first use, which are no part of an analysis' time. One small eigenvalue
    computation there, waited for; its memory is then left out of the peak."""
    gpu = cuda_device(device)
    if gpu is None:
        return
    torch_eigenvalues(torch.ones(64, 32), gpu)
    torch.cuda.synchronize(gpu)
    torch.cuda.reset_peak_memory_stats(gpu)


def gpu_peak_mb(device: str) -> float | None:
    """Peak memory torch allocated on the analysis' GPU, in MiB; None on the CPU."""
    gpu = cuda_device(device)
    return torch.cuda.max_memory_allocated(gpu) / 2**20 if gpu is not None else None


def analyze_in_child(path: Path, **kwargs) -> tuple[dict, pd.DataFrame]:
    """alphasel.analyze in a fresh process: (timing and schedule with ``peak_rss_mb``, table)."""
    path_entries = [str(_REPOSITORY), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(entry for entry in path_entries if entry)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table.csv"
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), json.dumps(kwargs),
                                  str(out)], stdout=subprocess.PIPE, text=True, env=env)
        # wait4 gives this child's own peak RSS; ru_maxrss is in KiB on Linux.
        _, status, usage = os.wait4(child.pid, 0)
        report = child.stdout.read()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the analysis of {path} failed (exit status {status})")
        result = json.loads(report.strip().splitlines()[-1])
        result["peak_rss_mb"] = usage.ru_maxrss / 1024
        return result, pd.read_csv(out)


def floor(path: Path, lowered: bool, threads: int = 2) -> list[tuple[str, tuple, float,
                                                                   np.ndarray]]:
    """(name, shape, seconds, eigenvalues) per matrix, one after another with ``threads`` BLAS
    threads, the matrix already read: numpy's float64 matmul + eigvalsh, or (``lowered``)
    spectra.eigenvalues with the OpenBLAS routines."""
    rows = []
    with open_source(path) as source, threadpool_limits(limits=threads):
        for ref in source.matrices():
            matrix = source.load(ref)
            started = time.perf_counter()
            if lowered:
                values = eigenvalues(matrix)
            else:
                wide = matrix.astype(np.float64)
                gram = wide.T @ wide if wide.shape[0] >= wide.shape[1] else wide @ wide.T
                del wide
                values = np.linalg.eigvalsh(gram)
            rows.append((ref.name, ref.shape, time.perf_counter() - started, values))
    return rows


def weightwatcher_q_up(path: Path) -> tuple[float, pd.DataFrame]:
    """WeightWatcher's analyze() of q_proj and up_proj of block 0 (as float32 nn.Linear)."""
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    import weightwatcher

    with open_source(path) as source:
        refs = {ref.name: ref for ref in source.matrices()}
        names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"]
        layers = []
        for name in names:
            rows, cols = refs[name].shape
            layer = torch.nn.Linear(cols, rows, bias=False)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(source.load(refs[name])))
            layers.append(layer)
    model = torch.nn.Sequential(*layers)
    started = time.perf_counter()
    table = weightwatcher.WeightWatcher(model=model).analyze()
    elapsed = time.perf_counter() - started
    return elapsed, table.assign(name=names)


def _relative(ours: pd.Series, reference: pd.Series) -> float:
    return float((np.abs(ours - reference) / np.abs(reference)).max())


def run_block(folder: Path, blocks: int, with_weightwatcher: bool, device: str = "cpu") -> None:
    write_llama(folder, blocks)
    print(f"synthetic Llama-2-7B: {blocks} block(s) of bf16 Student-t weights in {folder}")
    print(f"{os.cpu_count()} cores; alphasel eigensolver: {eigensolver()}")
    ours, table = analyze_in_child(folder)
    plain = floor(folder, lowered=False)
    lowered = floor(folder, lowered=True)
    print(f"\n{'matrix':38} {'shape':>12} {'floor s':>8} {'lowered s':>9}")
    for (name, shape, seconds, _), (_, _, low, _) in zip(plain, lowered, strict=True):
        print(f"{name:38} {f'{shape[0]}x{shape[1]}':>12} {seconds:8.2f} {low:9.2f}")
    floor_s = sum(row[2] for row in plain)
    lowered_s = sum(row[2] for row in lowered)
    count = len(plain)
    print(f"{'total':38} {'':>12} {floor_s:8.2f} {lowered_s:9.2f}")
    print(f"\nalphasel analyze (file → table)   {ours['elapsed_s']:7.2f} s  "
          f"({ours['elapsed_s'] / count:.2f} s/matrix; {ours['workers']} workers × "
          f"{ours['blas_threads']} BLAS threads)")
    print(f"  against the floor               {ours['elapsed_s'] / floor_s:7.2f} x  "
          f"(target ≤ 1.15)")
    print(f"  against the lowered floor       {ours['elapsed_s'] / lowered_s:7.2f} x")
    print(f"  peak RSS                        {ours['peak_rss_mb']:7.0f} MB (target ≤ 1500)")
    fitted = pd.Series({name: fit_power_law(values, "ks").alpha
                        for name, _, _, values in plain})
    indexed = table.set_index("name")
    print(f"  max relative alpha difference to a fit of the floor's eigenvalues "
          f"{_relative(indexed.loc[fitted.index, 'alpha'], fitted):.1e}")
    if device != "cpu":
        on_device, device_table = analyze_in_child(folder, device=device)
        device_table = device_table.set_index("name").loc[indexed.index]
        print(f"\n--device {device}: {on_device['elapsed_s']:.2f} s "
              f"({count / on_device['elapsed_s']:.2f} matrices/s), peak GPU memory "
              f"{on_device['gpu_peak_mb']:.0f} MB; max relative alpha difference to the CPU "
              f"path {_relative(device_table['alpha'], indexed['alpha']):.1e} (target ≤ 1e-6)")
    if not with_weightwatcher:
        return
    q_up = r"layers\.0\.(self_attn\.q_proj|mlp\.up_proj)$"
    pair, pair_table = analyze_in_child(folder, include=[q_up])
    ww_s, reference = weightwatcher_q_up(folder)
    pair_table = pair_table.set_index("name").loc[reference["name"]]
    print(f"\nq_proj + up_proj: alphasel {pair['elapsed_s']:.2f} s, WeightWatcher 0.7.7 "
          f"analyze() {ww_s:.2f} s: {ww_s / pair['elapsed_s']:.2f}x (target ≥ 3.5)")
    for column in ("alpha", "xmin"):
        print(f"  max relative {column} difference to WeightWatcher "
              f"{_relative(pair_table[column].to_numpy(), reference[column].to_numpy()):.1e}")


def run_full(folder: Path, downsample: str, samples: int, slice_blocks: int,
             device: str) -> None:
    """The whole checkpoint with ``downsample``/``samples`` on ``device``; with
    ``slice_blocks``, also the float64 (no downsampling) analysis extrapolated from that many
    blocks plus the embedding and LM head."""
    started = time.perf_counter()
    write_llama(folder, LLAMA_2_7B["layers"], embeddings=True)
    size = sum(path.stat().st_size for path in folder.glob("*.safetensors")) / 1e9
    print(f"synthetic Llama-2-7B checkpoint: {size:.1f} GB bf16 in {folder} "
          f"(written or found in {time.perf_counter() - started:.0f} s)")
    print(f"{os.cpu_count()} cores; device {device}; eigensolver: {eigensolver()}")
    result, table = analyze_in_child(folder, downsample=downsample, samples=samples,
                                     device=device)
    ok = int((table["status"] == "ok").sum())
    gpu = (f", peak GPU memory {result['gpu_peak_mb']:.0f} MB"
           if result["gpu_peak_mb"] is not None else "")
    print(f"\nwhole model, --downsample {downsample} --samples {samples}: "
          f"{result['elapsed_s']:.1f} s for {len(table)} matrices ({ok} fitted; "
          f"{len(table) / result['elapsed_s']:.2f} matrices/s), peak RSS "
          f"{result['peak_rss_mb']:.0f} MB{gpu}, {result['workers']} workers × "
          f"{result['blas_threads']} BLAS threads")
    if slice_blocks <= 0:
        return
    blocks = "|".join(str(block) for block in range(slice_blocks))
    part, part_table = analyze_in_child(folder, include=[rf"layers\.({blocks})\."],
                                        device=device)
    ends, ends_table = analyze_in_child(folder, include=[r"embed_tokens|lm_head"],
                                        device=device)
    total = part["elapsed_s"] * LLAMA_2_7B["layers"] / slice_blocks + ends["elapsed_s"]
    matrices = len(part_table) * LLAMA_2_7B["layers"] // slice_blocks + len(ends_table)
    print(f"\nfull float64: {slice_blocks} blocks ({len(part_table)} matrices) "
          f"{part['elapsed_s']:.1f} s (peak RSS {part['peak_rss_mb']:.0f} MB); embedding + "
          f"head {ends['elapsed_s']:.1f} s (peak RSS {ends['peak_rss_mb']:.0f} MB)")
    print(f"  extrapolated to {LLAMA_2_7B['layers']} blocks: {total:.0f} s = "
          f"{total / 60:.1f} min for {matrices} matrices ({matrices / total:.2f} matrices/s)")
