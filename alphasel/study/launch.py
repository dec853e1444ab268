"""Starting a study and running it: :func:`create_study` analyses the model, plans every run
and writes the study directory; :func:`run_study` runs what is not complete on an executor
(the local one, or Ray)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alphasel.errors import StudyError
from alphasel.paths import model_slug, studies_dir, utc_stamp
from alphasel.study.directory import (
    ANALYSIS_FILE,
    RunState,
    check_new_study,
    open_study,
    rewrite_matrix,
    run_folder,
    run_state,
    write_study,
)
from alphasel.study.matrix import RunEntry, expand
from alphasel.study.spec import StudySpec
from alphasel.study.stability import selection_stability

#: Where runs execute: worker processes here, or one Ray task per run (``alphasel[cluster]``).
EXECUTORS = ("local", "ray")
#: How often a study starts a killed run again before it counts as failed (--retries).
RETRIES = 1


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


def extend_study(study: str | Path, seeds: list[int] | None = None,
                 add: int | None = None) -> list[RunEntry]:
    """Give a study more seeds: ``seeds`` (the whole list it should have, a superset of its
    own) or ``add`` more after its last. Every run it has keeps its id and record (the plans
    are remade from the study's own analysis.csv, and must come out as they were); the new
    seeds' runs are added to matrix.json, to be run by :func:`run_study`. Returns them."""
    import dataclasses

    from alphasel.table import read_table

    study = Path(study)
    spec, entries = open_study(study)
    # The seeds the matrix has (a grown matrix whose spec.json was not rewritten still counts).
    spec = dataclasses.replace(spec, seeds=sorted({entry.seed for entry in entries}
                                                  | set(spec.seeds)))
    if (seeds is None) == (add is None):
        raise StudyError("give the seeds the study should have (--seeds N) or how many to add "
                         "(--add-seeds M), one of them")
    if add is not None:
        if isinstance(add, bool) or not isinstance(add, int) or add < 1:
            raise StudyError(f"--add-seeds {add} must be a whole number ≥ 1")
        seeds = [*spec.seeds, *range(max(spec.seeds) + 1, max(spec.seeds) + 1 + add)]
    assert seeds is not None
    dropped = sorted(set(spec.seeds) - set(seeds))
    if dropped or len(seeds) < len(spec.seeds):
        more = (f"--seeds {len(spec.seeds) + 1} or more" if spec.seeds == list(
            range(len(spec.seeds))) else "a comma list of seeds holding them all")
        raise StudyError(f"--seeds: the study has {len(spec.seeds)} seeds "
                         f"({', '.join(map(str, spec.seeds))}); a study only grows: give "
                         f"{more}, or --add-seeds M")
    grown = dataclasses.replace(spec, seeds=list(dict.fromkeys([*spec.seeds, *seeds])))
    remade = expand(grown, read_table(study / ANALYSIS_FILE))
    known = {entry.run_id for entry in entries}
    lost = known - {entry.run_id for entry in remade}
    if lost:
        raise StudyError(f"the study's plans do not come out as they were ({len(lost)} run(s) "
                         f"such as {sorted(lost)[0]} would change; another alphasel version?): "
                         "start a new study for more seeds")
    added = [entry for entry in remade if entry.run_id not in known]
    rewrite_matrix(study, grown, [*entries, *added])
    return added


def run_study(study: str | Path, *, executor: str = "local", parallel: int = 1,
              report: Callable[[RunEntry, RunState, float], None] | None = None,
              address: str | None = None, gpus_per_run: float = 0,
              cpus_per_run: float = 1, retries: int = RETRIES) -> dict[str, RunState]:
    """Run every run of ``study`` that is not complete; returns run id → state for all. A run
    whose process (or Ray worker) is killed mid-training is run again from scratch up to
    ``retries`` times, then recorded as failed with how it died.

    ``local``: worker processes on this machine, ``parallel`` at a time. ``ray``: one Ray task
    per run with ``cpus_per_run``/``gpus_per_run`` as its resources, on a local Ray instance
    (``address`` None) or the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://…``);
    see :mod:`alphasel.study.ray_executor`."""
    study = Path(study)
    if executor not in EXECUTORS:
        raise StudyError(f"--executor {executor}: use one of {', '.join(EXECUTORS)}")
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise StudyError(f"--parallel {parallel} must be a whole number ≥ 1")
    check_retries(retries)
    states, todo = pending(study)
    if executor == "ray":
        from alphasel.study.ray_executor import run_ray

        states.update(run_ray(study, todo, address=address, gpus_per_run=gpus_per_run,
                              cpus_per_run=cpus_per_run, report=report, retries=retries))
    else:
        from alphasel.study.local import run_local

        states.update(run_local(study, todo, parallel, report, retries))
    return states


def pending(study: Path) -> tuple[dict[str, RunState], list[RunEntry]]:
    """(run id → state of every run of the study, the runs that are not complete)."""
    _, entries = open_study(study)
    states = {entry.run_id: run_state(run_folder(study, entry.run_id)) for entry in entries}
    return states, [entry for entry in entries if states[entry.run_id] != RunState.COMPLETE]


def check_retries(retries: int) -> int:
    """``retries`` if it is a whole number ≥ 0, else a StudyError."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise StudyError(f"--retries {retries} must be a whole number ≥ 0 (the times a killed "
                         "run is started again)")
    return retries
