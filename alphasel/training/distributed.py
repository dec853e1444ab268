"""Several processes, one run: under ``torchrun`` or ``accelerate launch`` every process runs
the same code; the main process decides (the run directory, a re-selection's plan) and every
process receives its decision, so all ranks act alike and fail together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from alphasel.errors import RunError
from alphasel.plan import InjectionPlan


def cpu_only() -> bool:
    """No accelerator to choose from: tell accelerate/transformers so explicitly.

    That pins nothing (there is nothing else), but without it accelerate treats a torchrun
    launch on CPUs as separate single processes (each would train alone and write the same
    record), and transformers refuses --bf16 ("doesn't support bf16/gpu")."""
    accelerators = (torch.cuda.is_available(), torch.backends.mps.is_available(),
                    hasattr(torch, "xpu") and torch.xpu.is_available())
    return not any(accelerators)


def process_state() -> Any:
    """accelerate's process state: starts the process group under torchrun/accelerate launch
    (gloo on CPU, NCCL on GPUs) and is a single process otherwise."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())


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
    same-shaped matrices otherwise)."""
    if state.num_processes == 1:
        return
    from torch.distributed import all_gather_object

    gathered: list[Any] = [None] * state.num_processes
    all_gather_object(gathered, plan.module_names)
    if any(names != gathered[0] for names in gathered):
        raise RunError("re-selection chose different modules on different processes; "
                       "please report this with the run's config.json")
