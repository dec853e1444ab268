"""A study on disk: the names of its files, whether a directory is a study, opening one, and
the one vocabulary of a run's state.

    runs/studies/<id>/
      spec.json          the resolved StudySpec (record "alphasel-study")
      analysis.csv       the alpha table every plan came from
      stability.csv      Jaccard overlap of the alpha-based selections across estimators and
                         downsampling draws (alphasel.study.stability)
      matrix.json        every run: id, label, k, rank, seed, sweep, budget, config, plan
      runs/<run-id>/     the run records (a failed run: error.json and what it wrote)
      logs/<run-id>.log  each run's output
      table.csv          the comparison table
      report.html        the report page (alphasel.plots.report), figures/<name>.html (and
                         .png/.svg/.pdf with --format), plotly.min.js the pages share
                         (alphasel.plots.output.PLOTLYJS_FILE)

Everything that reads or writes a study takes its names from here; the runner and the
executors build on this module, never the reverse.
"""

from __future__ import annotations

import json
import traceback as tracebacks
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from alphasel.errors import StudyError
from alphasel.jsonfiles import write_json
from alphasel.paths import studies_dir
from alphasel.provenance import utc_now
from alphasel.training.record import holds_run, is_complete

if TYPE_CHECKING:
    from alphasel.study.matrix import RunEntry
    from alphasel.study.spec import StudySpec

#: spec.json's "record": marks a directory as an alphasel study.
STUDY_KIND = "alphasel-study"
SPEC_FILE = "spec.json"
MATRIX_FILE = "matrix.json"
ANALYSIS_FILE = "analysis.csv"
STABILITY_FILE = "stability.csv"
RUNS_DIR = "runs"
LOGS_DIR = "logs"
ERROR_FILE = "error.json"
TABLE_FILE = "table.csv"
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"


class RunState(StrEnum):
    """Where a run of a study (or a loose run directory) stands."""

    COMPLETE = "complete"
    """A finished run record (summary.json of status complete)."""
    FAILED = "failed"
    """The run recorded an error.json."""
    INCOMPLETE = "incomplete"
    """A run directory without a finished record or an error: still running, or killed."""
    MISSING = "missing"
    """Never started: nothing of the run on disk."""


def run_state(folder: str | Path) -> RunState:
    """The state of the run whose directory is ``folder``."""
    folder = Path(folder)
    if is_complete(folder):
        return RunState.COMPLETE
    if (folder / ERROR_FILE).is_file():
        return RunState.FAILED
    return RunState.INCOMPLETE if holds_run(folder) else RunState.MISSING


def run_folder(study: Path, run_id: str) -> Path:
    """Where the study keeps the record of run ``run_id``."""
    return Path(study) / RUNS_DIR / run_id


def log_file(study: Path, run_id: str) -> Path:
    """Where the study keeps the output of run ``run_id``."""
    return Path(study) / LOGS_DIR / f"{run_id}.log"


def _json_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_study(path: str | Path) -> bool:
    """Whether ``path`` is a study directory: a spec.json of a study and a matrix.json."""
    path = Path(path)
    spec = _json_object(path / SPEC_FILE) if (path / MATRIX_FILE).is_file() else None
    return spec is not None and spec.get("record") == STUDY_KIND


def check_study(path: str | Path) -> Path:
    """``path``, or a :class:`StudyError` that says what it lacks to be a study."""
    path = Path(path)
    if not path.is_dir():
        raise StudyError(f"study '{path}' does not exist: give a directory under "
                         f"{studies_dir()}")
    if is_study(path):
        return path
    if not (path / MATRIX_FILE).is_file():
        hint = (" (it is a run record: compare it with others as `alphasel compare RUN RUN`)"
                if holds_run(path) else "")
        raise StudyError(f"'{path}' is not an alphasel study: it holds no {MATRIX_FILE}{hint};"
                         " pass a study directory written by `alphasel study` "
                         "(runs/studies/<id>)")
    raise StudyError(f"'{path}' is not an alphasel study (its {SPEC_FILE} is missing or not "
                     "a study's): give a directory `alphasel study` wrote")


def spec_fields(study: Path) -> dict[str, Any]:
    """spec.json's fields as written (empty when it cannot be read)."""
    return _json_object(Path(study) / SPEC_FILE) or {}


def matrix_entries(study: Path) -> list[dict[str, Any]]:
    """matrix.json's run entries, checked for the fields every reader needs (run_id, label,
    seed, and a sweep object, empty when absent)."""
    path = Path(study) / MATRIX_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudyError(f"cannot read '{path}' ({err}): re-create the study's matrix with "
                         "`alphasel study`") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not runs:
        raise StudyError(f"'{path}' lists no runs (a JSON object with a non-empty \"runs\" "
                         "list is expected): re-create the study's matrix with `alphasel study`")
    for index, entry in enumerate(runs):
        missing = [key for key in ("run_id", "label", "seed")
                   if not isinstance(entry, dict) or entry.get(key) is None]
        if missing:
            raise StudyError(f"'{path}': run entry {index} lacks {', '.join(missing)}: "
                             "re-create the study's matrix with `alphasel study`")
        if not isinstance(entry.get("sweep") or {}, dict):
            raise StudyError(f"'{path}': run entry {index} has a sweep that is not an object: "
                             "re-create the study's matrix with `alphasel study`")
        entry["sweep"] = entry.get("sweep") or {}
    return runs


def open_study(path: str | Path) -> tuple[StudySpec, list[RunEntry]]:
    """The spec and runs of a study directory."""
    from alphasel.study.matrix import RunEntry
    from alphasel.study.spec import StudySpec

    path = check_study(path)
    data = {key: value for key, value in spec_fields(path).items()
            if key not in ("record", "created", "extended")}
    spec = StudySpec.from_dict(data, source=f"study '{path}'")
    return spec, [RunEntry(**run) for run in matrix_entries(path)]


def check_new_study(out: str | Path | None) -> None:
    """Refuse ``out`` as a new study's directory when it already holds something."""
    if out is not None and Path(out).exists() and any(Path(out).iterdir()):
        kind = "a study" if is_study(Path(out)) else "files"
        raise StudyError(f"--out '{out}' already holds {kind}: continue it with --resume "
                         f"{out}, or choose another --out")


def write_study(path: Path, spec: StudySpec, table: pd.DataFrame, entries: list[RunEntry],
                stability: pd.DataFrame) -> Path:
    """Write a new study's files (the spec last: a directory is a study once it is there)."""
    from alphasel.table import write_table

    (path / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    write_table(table, path / ANALYSIS_FILE)
    if not stability.empty:
        write_table(stability, path / STABILITY_FILE)
    write_json(path / MATRIX_FILE, {"runs": [entry.to_dict() for entry in entries]})
    write_json(path / SPEC_FILE, {"record": STUDY_KIND, **spec.to_dict(), "created": utc_now()})
    return path


def rewrite_matrix(path: Path, spec: StudySpec, entries: list[RunEntry]) -> Path:
    """Replace a study's matrix.json and spec.json (its runs grew: more seeds), the matrix
    first and the spec last, each whole; the spec keeps its creation time."""
    created = spec_fields(path).get("created") or utc_now()
    write_json(path / MATRIX_FILE, {"runs": [entry.to_dict() for entry in entries]})
    write_json(path / SPEC_FILE, {"record": STUDY_KIND, **spec.to_dict(), "created": created,
                                  "extended": utc_now()})
    return path


def write_error(folder: Path, error: BaseException | str) -> None:
    """Record why the run in ``folder`` failed (its error.json): an exception with its
    traceback, or a message about a process that died without a word."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(error, BaseException):
        record = {"type": type(error).__name__, "error": str(error) or type(error).__name__,
                  "traceback": tracebacks.format_exc()[-4000:]}
    else:
        record = {"type": "ProcessError", "error": error}
    write_json(folder / ERROR_FILE, {**record, "time": utc_now()})


def error_text(folder: Path) -> str:
    """A failed run's error.json as one line: ``Type: message``."""
    data = _json_object(folder / ERROR_FILE)
    if data is None:
        return f"unreadable {ERROR_FILE}"
    message = " ".join(str(data.get("error", "")).split())
    return f"{data['type']}: {message}" if data.get("type") else message


def failures(study: Path) -> dict[str, str]:
    """Run id → error message of every failed run."""
    out = {}
    for path in sorted((Path(study) / RUNS_DIR).glob(f"*/{ERROR_FILE}")):
        data = _json_object(path)
        out[path.parent.name] = data.get("error", "") if data is not None \
            else "unreadable error.json"
    return out
