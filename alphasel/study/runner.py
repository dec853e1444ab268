"""A study on disk, and running it: one process per run, resumable and idempotent.

    runs/studies/<id>/
      spec.json      the resolved StudySpec (record "alphasel-study")
      analysis.csv   the alpha table every plan came from
      stability.csv  Jaccard overlap of the alpha-based selections across estimators and
                     downsampling draws (alphasel.study.stability)
      matrix.json    every run: id, label, k, rank, seed, sweep, budget, config, plan
      runs/<run-id>/ the run records (a failed run: error.json and what it wrote)
      logs/<run-id>.log  each run's output
      table.csv      the comparison table

A run's id derives from its resolved configuration, so running the study again (or with
``--resume``) skips complete runs and re-runs only missing, interrupted or failed ones. Each run
is its own process: its peak memory is its own, and a crash (out of memory) fails that run only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from datetime import UTC, datetime
from pathlib import Path

from alphasel.errors import StudyError
from alphasel.study.matrix import RunEntry, expand
from alphasel.study.spec import StudySpec
from alphasel.study.stability import STABILITY_FILE, selection_stability
from alphasel.table import model_slug, runs_dir

STUDY_KIND = "alphasel-study"
SPEC_FILE = "spec.json"
MATRIX_FILE = "matrix.json"
ANALYSIS_FILE = "analysis.csv"
RUNS_DIR = "runs"
LOGS_DIR = "logs"
ERROR_FILE = "error.json"
TABLE_FILE = "table.csv"
#: Where runs execute: worker processes here, or one Ray task per run (``alphasel[cluster]``).
EXECUTORS = ("local", "ray")


def studies_dir() -> Path:
    """Where studies go by default: ``runs/studies`` (``$ALPHASEL_RUNS/studies``)."""
    return runs_dir() / "studies"


def is_study(path: Path) -> bool:
    spec = Path(path) / SPEC_FILE
    if not spec.is_file() or not (Path(path) / MATRIX_FILE).is_file():
        return False
    try:
        return json.loads(spec.read_text()).get("record") == STUDY_KIND
    except (OSError, ValueError):
        return False


def create_study(spec: StudySpec, out: str | Path | None = None, *,
                 progress: bool = True) -> Path:
    """Analyse the model, plan every run and write the study directory (nothing is written
    when the spec cannot be planned)."""
    from alphasel.analyzer import analyze
    from alphasel.table import write_table
    from alphasel.train.record import write_json

    if out is not None and Path(out).exists() and any(Path(out).iterdir()):
        kind = "a study" if is_study(Path(out)) else "files"
        raise StudyError(f"--out '{out}' already holds {kind}: continue it with --resume "
                         f"{out}, or choose another --out")
    table = analyze(spec.model, spec.estimator, progress=progress)
    entries = expand(spec, table)
    stability = selection_stability(
        entries, lambda **options: analyze(spec.model, progress=progress, **options), table,
        spec.estimator)
    path = Path(out) if out is not None else studies_dir() / (
        f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{model_slug(spec.model)}-"
        f"{model_slug(spec.data)}")
    (path / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    write_table(table, path / ANALYSIS_FILE)
    if not stability.empty:
        write_table(stability, path / STABILITY_FILE)
    write_json(path / MATRIX_FILE, {"runs": [entry.to_dict() for entry in entries]})
    write_json(path / SPEC_FILE, {"record": STUDY_KIND, **spec.to_dict(),
                                  "created": datetime.now(UTC).isoformat(timespec="seconds")})
    return path


def open_study(path: str | Path) -> tuple[StudySpec, list[RunEntry]]:
    """The spec and runs of a study directory."""
    path = Path(path)
    if not path.is_dir():
        raise StudyError(f"study '{path}' does not exist: give a directory under "
                         f"{studies_dir()}")
    if not is_study(path):
        raise StudyError(f"'{path}' is not an alphasel study (no spec.json/matrix.json of one): "
                         "give a directory `alphasel study` wrote")
    data = json.loads((path / SPEC_FILE).read_text())
    data = {key: value for key, value in data.items() if key not in ("record", "created")}
    spec = StudySpec.from_dict(data, source=f"study '{path}'")
    runs = json.loads((path / MATRIX_FILE).read_text())["runs"]
    return spec, [RunEntry(**run) for run in runs]


def run_state(study: Path, entry: RunEntry) -> str:
    """``complete``, ``failed`` (error.json) or ``pending`` (absent or interrupted)."""
    from alphasel.train.record import is_complete

    folder = study / RUNS_DIR / entry.run_id
    if is_complete(folder):
        return "complete"
    return "failed" if (folder / ERROR_FILE).is_file() else "pending"


def run_one(study: str | Path, run_id: str) -> None:
    """Train one run of the study into runs/<run-id>/ (in this process); a failure is written
    to its error.json and re-raised."""
    study = Path(study)
    spec, entries = open_study(study)
    entry = next((item for item in entries if item.run_id == run_id), None)
    if entry is None:
        raise StudyError(f"study '{study}' has no run '{run_id}'")
    run_entry(spec, entry, study / RUNS_DIR / entry.run_id, command=[
        "alphasel", "study", "--resume", str(study)])


def run_entry(spec: StudySpec, entry: RunEntry, folder: Path,
              command: list[str] | None = None) -> None:
    """Train ``entry`` into ``folder``; a failure is written to its error.json and re-raised."""
    from alphasel.plan import InjectionPlan
    from alphasel.train.config import TrainConfig
    from alphasel.train.record import write_json
    from alphasel.train.trainer import train

    try:
        plan = InjectionPlan.from_dict(entry.plan) if entry.plan else None
        train(spec.model, plan, spec.data, TrainConfig.from_dict(entry.config), out=folder,
              overwrite=True, progress=False, command=command)
    except BaseException as err:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / ERROR_FILE, {
            "type": type(err).__name__, "error": str(err) or type(err).__name__,
            "traceback": traceback.format_exc()[-4000:],
            "time": datetime.now(UTC).isoformat(timespec="seconds")})
        raise


def prepare(study: Path, entry: RunEntry) -> None:
    """Clear what an interrupted or failed attempt left, so the run starts clean."""
    folder = study / RUNS_DIR / entry.run_id
    if folder.exists():
        shutil.rmtree(folder)


def worker_command(study: Path, run_id: str) -> list[str]:
    return [sys.executable, "-m", "alphasel.study.worker", str(study), run_id]


def _environment(parallel: int) -> dict[str, str]:
    """Threads per run: the cores shared out, so parallel runs do not oversubscribe them."""
    env = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def execute(study: Path, entry: RunEntry, env: dict[str, str] | None = None) -> str:
    """Run ``entry`` in a worker process of its own, its output in logs/<run-id>.log; returns
    its state (a process that died without a word, e.g. killed for memory, is ``failed``)."""
    prepare(study, entry)
    logs = study / LOGS_DIR
    logs.mkdir(exist_ok=True)
    with open(logs / f"{entry.run_id}.log", "w") as log:
        code = subprocess.run(worker_command(study, entry.run_id), stdout=log,
                              stderr=subprocess.STDOUT, env=env).returncode
    state = run_state(study, entry)
    if code != 0 and state == "pending":  # killed before it could write error.json
        write_error(study, entry, f"the run's process exited with code {code}; see "
                                  f"{logs / (entry.run_id + '.log')}")
        state = "failed"
    return state


def run_local(study: Path, entries: list[RunEntry], parallel: int = 1,
              report: Callable[[RunEntry, str, float], None] | None = None) -> dict[str, str]:
    """Run ``entries`` as worker processes, ``parallel`` at a time; returns run id → state."""
    from concurrent.futures import ThreadPoolExecutor

    env = _environment(parallel)

    def one(entry: RunEntry) -> str:
        started = time.perf_counter()
        state = execute(study, entry, env)
        if report is not None:
            report(entry, state, time.perf_counter() - started)
        return state

    states: dict[str, str] = {}
    with ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(one, entry): entry for entry in entries}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                states[futures[future].run_id] = future.result()
    return states


def write_error(study: Path, entry: RunEntry, message: str) -> None:
    from alphasel.train.record import write_json

    folder = study / RUNS_DIR / entry.run_id
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / ERROR_FILE, {"type": "ProcessError", "error": message,
                                     "time": datetime.now(UTC).isoformat(timespec="seconds")})


def run_study(study: str | Path, *, executor: str = "local", parallel: int = 1,
              report: Callable[[RunEntry, str, float], None] | None = None,
              address: str | None = None, gpus_per_run: float = 0,
              cpus_per_run: float = 1) -> dict[str, str]:
    """Run every run of ``study`` that is not complete; returns run id → state for all.

    ``local``: worker processes on this machine, ``parallel`` at a time. ``ray``: one Ray task
    per run with ``cpus_per_run``/``gpus_per_run`` as its resources, on a local Ray instance
    (``address`` None) or the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://…``);
    see :mod:`alphasel.study.ray_executor`."""
    study = Path(study)
    if executor not in EXECUTORS:
        raise StudyError(f"--executor {executor}: use one of {', '.join(EXECUTORS)}")
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise StudyError(f"--parallel {parallel} must be a whole number ≥ 1")
    _, entries = open_study(study)
    states = {entry.run_id: run_state(study, entry) for entry in entries}
    todo = [entry for entry in entries if states[entry.run_id] != "complete"]
    if executor == "ray":
        from alphasel.study.ray_executor import run_ray

        states.update(run_ray(study, todo, address=address, gpus_per_run=gpus_per_run,
                              cpus_per_run=cpus_per_run, report=report))
    else:
        states.update(run_local(study, todo, parallel, report))
    return states


def failures(study: Path) -> dict[str, str]:
    """Run id → error message of every failed run."""
    out = {}
    for folder in sorted((study / RUNS_DIR).glob(f"*/{ERROR_FILE}")):
        try:
            out[folder.parent.name] = json.loads(folder.read_text()).get("error", "")
        except (OSError, ValueError):
            out[folder.parent.name] = "unreadable error.json"
    return out
