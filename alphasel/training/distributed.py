"""Several processes, one run: under ``torchrun`` or ``accelerate launch`` every process runs
the same code; the main process decides (the run directory, a re-selection's plan) and every
process receives its decision, so all ranks act alike and fail together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from alphasel.errors import RunError, TrainConfigError
from alphasel.plan import InjectionPlan


def cpu_only() -> bool:
    """No accelerator to choose from: tell accelerate/transformers so explicitly.

    That pins nothing (there is nothing else), but without it accelerate treats a torchrun
    launch on CPUs as separate single processes (each would train alone and write the same
    record), and transformers refuses --bf16 ("doesn't support bf16/gpu")."""
    accelerators = (torch.cuda.is_available(), torch.backends.mps.is_available(),
                    hasattr(torch, "xpu") and torch.xpu.is_available())
    return not any(accelerators)


def process_state(timeout_s: int) -> Any:
    """accelerate's process state: starts the process group under torchrun/accelerate launch
    (gloo on CPU, NCCL on GPUs) and is a single process otherwise.

    ``timeout_s`` (--ddp-timeout) is how long a collective waits for a rank: the group is made
    here, before the Trainer, so its own ddp_timeout would never apply; without it NCCL's
    10-minute default kills a job whose main process measures alpha or generates for longer.
    Each rank's device is set before anything touches a GPU."""
    from datetime import timedelta

    from accelerate import PartialState

    return PartialState(cpu=cpu_only(), timeout=timedelta(seconds=timeout_s))


def check_one_process_per_gpu(state: Any) -> None:
    """Refuse a single process that sees several GPUs: the Trainer would run it as
    ``nn.DataParallel``, multiplying the batch by the GPU count behind the record's back."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if state.num_processes == 1 and gpus > 1:
        raise TrainConfigError(
            f"this process sees {gpus} GPUs; alphasel trains one process per GPU (one meaning "
            f"of batch size): launch `torchrun --nproc_per_node {gpus} -m alphasel train ...`, "
            "or choose one GPU with CUDA_VISIBLE_DEVICES=0")


def start_process(config: Any) -> Any:
    """This process's place in a run with ``config`` (a TrainConfig): the process group started
    with --ddp-timeout and the rank's device set, then checked before anything touches a GPU or
    takes minutes (the inline analysis): one process per GPU, and a 4-bit base's support probed
    on this rank's own device."""
    state = process_state(config.ddp_timeout)
    check_one_process_per_gpu(state)
    if config.quantize:
        from alphasel.training.models import check_4bit_supported

        check_4bit_supported(state.device)
    return state


def global_batch(batch_size: int, grad_accum: int, processes: int) -> int:
    """Examples per optimizer step, over every process."""
    return batch_size * grad_accum * processes


def batch_record(batch_size: int, grad_accum: int, processes: int) -> dict[str, int]:
    """config.json's ``batch``: per-device and global batch, processes and this process's GPUs
    (one or none: several are refused)."""
    return {"per_device": batch_size, "grad_accum": grad_accum, "processes": processes,
            "n_gpu": int(torch.cuda.is_available()),
            "global": global_batch(batch_size, grad_accum, processes)}


def agree(state: Any, make: Callable[[], Any]) -> Any:
    """Run ``make()`` on the main process and give its result (or its error) to every process,
    so all ranks use one run directory and fail together instead of waiting on each other."""
    if state.num_processes == 1:
        return make()
    from torch.distributed import broadcast_object_list

    payload: list[Any] = [None]
    if state.is_main_process:
        try:
            payload = [("ok", make())]
        except Exception as err:  # re-raised on every rank below
            payload = [("error", err)]
    broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise value
    return value


def check_same_modules(state: Any, plan: InjectionPlan) -> None:
    """Every process adapts the same modules (DDP would average unrelated gradients of
    same-shaped matrices otherwise): checked for the first plan and every re-selection's."""
    if state.num_processes == 1:
        return
    from torch.distributed import all_gather_object

    gathered: list[Any] = [None] * state.num_processes
    all_gather_object(gathered, plan.module_names)
    if any(names != gathered[0] for names in gathered):
        raise RunError("the processes of this run hold different plans (the plan file or "
                       "analysis differs between ranks, or re-selection diverged): give every "
                       "rank the same --plan, or report this with the run's config.json")
