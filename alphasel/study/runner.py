"""Running one run of a study: train its entry into runs/<run-id>/, in this process
(:func:`run_entry`, :func:`run_one`) or in a worker process of its own (:func:`execute`), so
its peak memory is its own and a crash (out of memory) fails that run only.

A run's id derives from its resolved configuration, so running the study again (or with
``--resume``) skips complete runs and re-runs only missing, interrupted or failed ones; every
attempt starts from a clean run directory (:func:`prepare`).

A worker's environment is set, not inherited, where it decides how a run uses the machine
(:func:`worker_environment`): its thread pools get the executor's CPU share for the run, and its
visible GPUs are the ones the executor placed it on.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from alphasel.errors import StudyError
from alphasel.study.directory import (
    RunState,
    log_file,
    open_study,
    run_folder,
    run_state,
    write_error,
)
from alphasel.study.matrix import RunEntry
from alphasel.study.spec import StudySpec


def run_one(study: str | Path, run_id: str, own_process: bool = False) -> None:
    """Train one run of the study into runs/<run-id>/ (in this process; ``own_process``: one
    that trains nothing else, such as a worker's); a failure is written to its error.json and
    re-raised."""
    study = Path(study)
    spec, entries = open_study(study)
    entry = next((item for item in entries if item.run_id == run_id), None)
    if entry is None:
        raise StudyError(f"study '{study}' has no run '{run_id}'")
    if own_process and entry.config.get("quantize") is None:
        from alphasel.training.console import keep_bitsandbytes_unloaded

        keep_bitsandbytes_unloaded()
    run_entry(spec, entry, run_folder(study, entry.run_id), command=[
        "alphasel", "study", "--resume", str(study)])


def run_entry(spec: StudySpec, entry: RunEntry, folder: Path,
              command: list[str] | None = None) -> None:
    """Train ``entry`` into ``folder``; a failure is written to its error.json and re-raised."""
    from alphasel.plan import InjectionPlan
    from alphasel.training.config import TrainConfig
    from alphasel.training.trainer import train

    try:
        plan = InjectionPlan.from_dict(entry.plan) if entry.plan else None
        train(spec.model, plan, spec.data, TrainConfig.from_dict(entry.config), out=folder,
              overwrite=True, progress=False, command=command)
    except BaseException as err:
        write_error(folder, err)
        raise


def prepare(study: Path, entry: RunEntry) -> None:
    """Clear what an interrupted or failed attempt left, so the run starts clean."""
    folder = run_folder(study, entry.run_id)
    if folder.exists():
        shutil.rmtree(folder)


#: The variables that size a worker's thread pools: OpenMP (torch's intra-op threads, and
#: OpenBLAS's when no variable of its own is set), MKL and OpenBLAS (numpy's BLAS, which the
#: alpha measurements run on). One count for all, so no library keeps an inherited one.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_environment(cpus: float, gpus: Sequence[str] | None) -> dict[str, str]:
    """This process's environment for a worker holding ``cpus`` CPUs (whole threads, at least
    one) and the GPUs ``gpus`` as CUDA_VISIBLE_DEVICES names them (an empty list: none, the run
    trains on CPUs; None: CUDA_VISIBLE_DEVICES as it is here).

    The thread counts are always written: an inherited count is wrong for a run given a share
    of the machine, whether it is the parent's (sized for the whole machine) or a Ray worker's
    OMP_NUM_THREADS=1."""
    env = dict(os.environ)
    threads = str(max(1, math.floor(cpus)))
    env.update(dict.fromkeys(THREAD_VARIABLES, threads))
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def worker_command(study: Path, run_id: str) -> list[str]:
    """The command line of a worker process that trains one run (:mod:`alphasel.study.worker`)."""
    return [sys.executable, "-m", "alphasel.study.worker", str(study), run_id]


class RunKilled(StudyError):
    """A run's process was killed on its last attempt (raised instead of recording it, for an
    executor that retries on its own: Ray)."""


def execute(study: Path, entry: RunEntry, env: dict[str, str], retries: int = 0,
            killed_raises: bool = False) -> RunState:
    """Run ``entry`` in a worker process of its own with the environment ``env`` (see
    :func:`worker_environment`), its output in logs/<run-id>.log; returns its state.

    A process that dies without a word (killed: by a signal, for memory, by whoever) is run
    again from scratch, up to ``retries`` more times, each attempt's output appended to the
    log; after the last it is ``failed``, its error.json naming how it died and how often. A run
    that fails with an error of its own (a bad plan, a diverged loss) is not retried: it would
    fail the same way. ``killed_raises``: a run killed on its last attempt raises
    :class:`RunKilled` instead of being recorded as failed."""
    log = log_file(study, entry.run_id)
    log.parent.mkdir(exist_ok=True)
    folder = run_folder(study, entry.run_id)
    attempts, code = 1 + max(0, retries), 0
    for attempt in range(1, attempts + 1):
        prepare(study, entry)
        with open(log, "w" if attempt == 1 else "a") as handle:
            if attempt > 1:
                handle.write(f"\n--- attempt {attempt} of {attempts}: the last one's process "
                             f"{_ending(code)} ---\n")
                handle.flush()
            code = subprocess.run(worker_command(study, entry.run_id), stdout=handle,
                                  stderr=subprocess.STDOUT,
                                  env={**env, PARENT_VARIABLE: str(os.getpid())}).returncode
        state = run_state(folder)
        if code == 0 or state not in (RunState.INCOMPLETE, RunState.MISSING):
            return state
    # killed before it could write error.json, on every attempt
    message = f"the run's process {_ending(code)} on each of {attempts} attempt(s); see {log}"
    if killed_raises:
        raise RunKilled(message)
    write_error(folder, message)
    return RunState.FAILED


def _ending(code: int) -> str:
    """How a process ended, from its return code (negative: the signal that killed it)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed ({name})"
    return f"exited with code {code}"


#: The worker's environment names the process that started it (see :func:`die_with_parent`).
PARENT_VARIABLE = "ALPHASEL_STUDY_PARENT"


def die_with_parent() -> None:
    """Called first in a worker: be killed when the process that started it dies (a Ray worker
    killed mid-run must not leave its training behind, writing into a run directory a retry
    is about to clear), and exit at once when that process is gone already. Linux only
    (``prctl``); elsewhere nothing."""
    expected = os.environ.get(PARENT_VARIABLE)
    if not sys.platform.startswith("linux") or expected is None:
        return
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: this process dies with its parent
    if os.getppid() != int(expected):  # the parent died before the line above
        sys.exit(1)
