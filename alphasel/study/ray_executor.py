"""The Ray executor: one Ray task per run, ``--cpus-per-run``/``--gpus-per-run`` as the task's
resources, so Ray's scheduler places runs on whatever CPUs and GPUs a cluster has.

Each task runs the same worker process the local executor runs (a process per run: its peak
memory is its own, a crash fails that run only). Where the study directory is visible to the
node that runs a task (one machine, or a filesystem the cluster shares), the worker writes the
run record there in place. Where it is not, the task builds a one-run study in a temporary
directory from the spec and the entry it was sent, trains there, and returns the run directory
and its log packed as a tar archive, which the driver unpacks into the study: either way the
study ends up whole on the driver's machine, and ``alphasel compare`` reads it the same way.

A task's worker gets the task's resources and no more (:func:`task_environment`): threads for
its CPUs (not Ray's OMP_NUM_THREADS=1), and the GPUs Ray assigned it, which Ray names in
CUDA_VISIBLE_DEVICES for a task that holds GPUs. A task without (``--gpus-per-run 0``) is shown
none and trains on CPUs: Ray leaves CUDA_VISIBLE_DEVICES alone for it, so it would see every GPU
of its node, and all such runs, one per CPU, would train on the node's first GPU.

Ray is the optional extra ``alphasel[cluster]``; without it ``--executor ray`` is refused in one
line. An address is checked before Ray is asked to connect, so a wrong one fails in seconds
rather than after Ray's own minute-long retries.
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from alphasel.errors import StudyError
from alphasel.study.directory import (
    LOGS_DIR,
    MATRIX_FILE,
    RUNS_DIR,
    SPEC_FILE,
    RunState,
    is_study,
    log_file,
    run_folder,
    run_state,
    write_error,
)
from alphasel.study.matrix import RunEntry
from alphasel.study.runner import RunKilled, execute, prepare, worker_environment

#: Seconds to wait for a TCP answer from a given cluster address.
CONNECT_TIMEOUT_S = 5.0


def import_ray() -> Any:
    """The ``ray`` module, or a StudyError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise StudyError("--executor ray needs Ray, which is not installed: pip install "
                         "'alphasel[cluster]' (or use --executor local)") from None
    return ray


def check_address(address: str | None) -> None:
    """Refuse a ``HOST:PORT`` or ``ray://HOST:PORT`` address that nothing answers on."""
    if address is None or address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise StudyError(f"--address {address}: give HOST:PORT of the Ray head (e.g. "
                         "127.0.0.1:6379), ray://HOST:10001, or auto")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise StudyError(f"--address {address}: no Ray cluster answers there ({err}); start "
                         "one with `ray start --head`, or leave --address out to run Ray on "
                         "this machine") from None


def connect(ray: Any, address: str | None) -> None:
    """``ray.init`` on the cluster at ``address``, or a new local instance (None)."""
    check_address(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except Exception as err:  # Ray raises ConnectionError, RuntimeError, ValueError …
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        where = f"the Ray cluster at '{address}'" if address else "a local Ray instance"
        raise StudyError(f"cannot connect to {where} ({first}): start one with `ray start "
                         "--head`, or leave --address out") from None


def task_environment(cpus: float, gpus: float) -> dict[str, str]:
    """The worker environment inside a Ray task that holds ``cpus`` CPUs and ``gpus`` GPUs:
    the GPUs Ray assigned it (its CUDA_VISIBLE_DEVICES), or none for a task without GPUs."""
    return worker_environment(cpus, None if gpus > 0 else [])


def run_task(study_path: str, spec_text: str, entry: dict[str, Any],
             ship: bool | None = None, cpus: float = 1, gpus: float = 0) -> dict[str, Any]:
    """The body of one Ray task, which holds ``cpus`` CPUs and ``gpus`` GPUs: run ``entry``
    and say how it went; a run whose process is killed raises :class:`RunKilled`, which Ray
    retries like a dead worker (Ray counts the attempts).

    ``ship`` None runs in place when this node sees the study, else in a temporary study whose
    result is returned packed (``archive``: tar bytes); True or False forces one way."""
    started = time.perf_counter()
    run = RunEntry(**entry)
    study = Path(study_path)
    env = task_environment(cpus, gpus)
    if not ship and (ship is False or is_study(study)):
        return {"state": execute(study, run, env, killed_raises=True), "archive": None,
                "seconds": time.perf_counter() - started}
    with tempfile.TemporaryDirectory(prefix="alphasel-run-") as folder:
        local = Path(folder) / "study"
        (local / RUNS_DIR).mkdir(parents=True)
        (local / SPEC_FILE).write_text(spec_text)
        (local / MATRIX_FILE).write_text(json.dumps({"runs": [entry]}))
        state = execute(local, run, env, killed_raises=True)
        return {"state": state, "archive": pack(local, run.run_id),
                "seconds": time.perf_counter() - started}


def pack(study: Path, run_id: str) -> bytes:
    """The run's directory and log as an uncompressed tar archive, paths relative to ``study``
    (adapter weights barely compress; their size is what crosses the network either way)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in _shipped(study, run_id):
            if path.exists():
                archive.add(path, arcname=path.relative_to(study).as_posix())
    return buffer.getvalue()


def _shipped(study: Path, run_id: str) -> tuple[Path, Path]:
    """What of a run crosses the network: its directory, then its log."""
    return run_folder(study, run_id), log_file(study, run_id)


def unpack(study: Path, run_id: str, data: bytes) -> None:
    """Put a shipped run into ``study``, replacing what an earlier attempt left. Only the run's
    own directory and log are taken from the archive, through tarfile's ``data`` filter (no
    links out, no absolute paths)."""
    allowed = tuple(path.relative_to(study).as_posix() for path in _shipped(study, run_id))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        members = archive.getmembers()
        strays = [m.name for m in members
                  if not (m.name in allowed or m.name.startswith(allowed[0] + "/"))]
        if strays:
            raise StudyError(f"run {run_id} came back with files outside its directory "
                             f"({strays[0]}): the worker's alphasel differs from the driver's")
        (study / LOGS_DIR).mkdir(exist_ok=True)
        archive.extractall(study, members=members, filter="data")


def run_ray(study: Path, entries: list[RunEntry], *, address: str | None = None,
            gpus_per_run: float = 0, cpus_per_run: float = 1,
            report: Callable[[RunEntry, RunState, float], None] | None = None,
            ship: bool | None = None, retries: int = 0) -> dict[str, RunState]:
    """Run ``entries`` as Ray tasks; returns run id → state. Connects to ``address`` (or
    starts Ray here) unless Ray is already initialised in this process, and disconnects only
    what it connected. ``retries``: a task whose Ray worker dies, or whose run's process is
    killed (:class:`RunKilled`), is run again by Ray (its ``max_retries``, counting both; the
    run's process dies with its worker and each attempt starts afresh), up to ``retries``
    times in all."""
    for name, value in (("--gpus-per-run", gpus_per_run), ("--cpus-per-run", cpus_per_run)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise StudyError(f"{name} {value} must be a number ≥ 0")
    if gpus_per_run > 1:
        raise StudyError(f"--gpus-per-run {gpus_per_run:g}: a run is one process, which trains "
                         "on one GPU (several take torchrun): use --gpus-per-run 1 or less")
    ray = import_ray()
    if not entries:
        return {}
    connected_here = not ray.is_initialized()
    if connected_here:
        connect(ray, address)
    try:
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run,
                          max_retries=retries, retry_exceptions=[RunKilled])(run_task)
        spec_text = (study / SPEC_FILE).read_text()
        pending = {}
        for entry in entries:
            prepare(study, entry)
            ref = task.remote(str(study.resolve()), spec_text, entry.to_dict(), ship,
                              cpus_per_run, gpus_per_run)
            pending[ref] = entry
        states: dict[str, RunState] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            entry = pending.pop(done[0])
            seconds = float("nan")
            try:
                outcome = ray.get(done[0])
            except Exception as err:  # the task died on every try (node lost, out of memory)
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                write_error(run_folder(study, entry.run_id),
                            f"the run's Ray task failed on each of {1 + retries} attempt(s): "
                            f"{first}")
                state = RunState.FAILED
            else:
                if outcome["archive"] is not None:
                    unpack(study, entry.run_id, outcome["archive"])
                state = run_state(run_folder(study, entry.run_id))
                seconds = outcome["seconds"]
            states[entry.run_id] = state
            if report is not None:
                report(entry, state, seconds)
        return states
    finally:
        if connected_here:
            ray.shutdown()
