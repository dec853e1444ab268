"""The local executor: each run in a worker process of its own on this machine, ``parallel``
at a time, the cores shared out between them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from alphasel.study.directory import RunState
from alphasel.study.matrix import RunEntry
from alphasel.study.runner import execute


def _environment(parallel: int) -> dict[str, str]:
    """Threads per run: the cores shared out, so parallel runs do not oversubscribe them."""
    env = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def run_local(study: Path, entries: list[RunEntry], parallel: int = 1,
              report: Callable[[RunEntry, RunState, float], None] | None = None
              ) -> dict[str, RunState]:
    """Run ``entries`` as worker processes, ``parallel`` at a time; returns run id → state."""
    env = _environment(parallel)

    def one(entry: RunEntry) -> RunState:
        started = time.perf_counter()
        state = execute(study, entry, env)
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
