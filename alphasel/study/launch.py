"""Starting a study and running it: :func:`create_study` analyses the model, plans every run
and writes the study directory; :func:`run_study` runs what is not complete on an executor
(the local one, or Ray)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alphasel.errors import StudyError
from alphasel.paths import model_slug, studies_dir, utc_stamp
from alphasel.study.directory import (
    RunState,
    check_new_study,
    open_study,
    run_folder,
    run_state,
    write_study,
)
from alphasel.study.matrix import RunEntry, expand
from alphasel.study.spec import StudySpec
from alphasel.study.stability import selection_stability

#: Where runs execute: worker processes here, or one Ray task per run (``alphasel[cluster]``).
EXECUTORS = ("local", "ray")


def create_study(spec: StudySpec, out: str | Path | None = None, *,
                 progress: bool = True) -> Path:
    """Analyse the model, plan every run and write the study directory (nothing is written
    when the spec cannot be planned)."""
    from alphasel.analyzer import analyze

    check_new_study(out)
    table = analyze(spec.model, spec.estimator, progress=progress)
    entries = expand(spec, table)
    stability = selection_stability(
        entries, lambda **options: analyze(spec.model, progress=progress, **options), table,
        spec.estimator)
    path = Path(out) if out is not None else studies_dir() / (
        f"{utc_stamp(microseconds=False)}-{model_slug(spec.model)}-{model_slug(spec.data)}")
    return write_study(path, spec, table, entries, stability)


def run_study(study: str | Path, *, executor: str = "local", parallel: int = 1,
              report: Callable[[RunEntry, RunState, float], None] | None = None,
              address: str | None = None, gpus_per_run: float = 0,
              cpus_per_run: float = 1) -> dict[str, RunState]:
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
    states = {entry.run_id: run_state(run_folder(study, entry.run_id)) for entry in entries}
    todo = [entry for entry in entries if states[entry.run_id] != RunState.COMPLETE]
    if executor == "ray":
        from alphasel.study.ray_executor import run_ray

        states.update(run_ray(study, todo, address=address, gpus_per_run=gpus_per_run,
                              cpus_per_run=cpus_per_run, report=report))
    else:
        from alphasel.study.local import run_local

        states.update(run_local(study, todo, parallel, report))
    return states
