"""The local executor: each run in a worker process of its own on this machine, ``parallel``
at a time, the cores shared out between them and each run on a GPU of its own.

The ``parallel`` runs hold one slot each, and a slot is what places a run: the cores divided by
``parallel`` as its threads, and, where GPUs are visible, slot i's GPU (the i-th visible one) as
its only one. A run that ends frees its slot for the next. One GPU per run because a run is one
process, and a process trains on one GPU (several take torchrun, one process per GPU, which a
study does not launch): with more GPUs than runs at once the rest stay idle, and more runs at
once than GPUs is refused before anything starts. Without a GPU the runs' CUDA_VISIBLE_DEVICES
is left as it is.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import torch

from alphasel.analyzer import usable_cores
from alphasel.errors import StudyError
from alphasel.study.directory import RunState
from alphasel.study.matrix import RunEntry
from alphasel.study.runner import execute, worker_environment


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs),
    or as indices where it is unset; none on a machine without CUDA."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    # CUDA stops reading the list at its first entry that names no device, so the devices it
    # shows are the first `count` entries.
    return [name.strip() for name in listed.split(",")][:count]


def gpu_slots(parallel: int) -> list[str | None]:
    """The GPU of each of ``parallel`` slots (None for each without GPUs); refuses more slots
    than there are GPUs."""
    gpus = visible_gpus()
    if not gpus:
        return [None] * parallel
    if parallel > len(gpus):
        raise StudyError(
            f"--parallel {parallel}: {len(gpus)} GPU(s) visible and each run takes one of its "
            f"own: use --parallel {len(gpus)} or fewer, CUDA_VISIBLE_DEVICES= to train on CPUs, "
            "or --executor ray --gpus-per-run 0.5 to share GPUs")
    return gpus[:parallel]


def slot_environments(parallel: int) -> list[dict[str, str]]:
    """The worker environment of each of ``parallel`` slots (see the module docstring)."""
    cpus = usable_cores() / parallel
    return [worker_environment(cpus, None if gpu is None else [gpu])
            for gpu in gpu_slots(parallel)]


def run_local(study: Path, entries: list[RunEntry], parallel: int = 1,
              report: Callable[[RunEntry, RunState, float], None] | None = None,
              retries: int = 0) -> dict[str, RunState]:
    """Run ``entries`` as worker processes, ``parallel`` at a time, each in a free slot, a run
    whose process is killed again up to ``retries`` times; returns run id → state."""
    free: queue.SimpleQueue[dict[str, str]] = queue.SimpleQueue()
    for env in slot_environments(parallel):
        free.put(env)

    def one(entry: RunEntry) -> RunState:
        started = time.perf_counter()
        env = free.get()  # never waits: the pool runs at most `parallel` of these at once
        try:
            state = execute(study, entry, env, retries=retries)
        finally:
            free.put(env)
        if report is not None:
            report(entry, state, time.perf_counter() - started)
        return state

    states: dict[str, RunState] = {}
    with ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(one, entry): entry for entry in entries}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                states[futures[future].run_id] = future.result()
    return states
