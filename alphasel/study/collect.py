"""Training runs as one table: a study's matrix joined with its run records, or loose runs.

One row per run, in the columns :data:`TABLE_COLUMNS` lists (with the sweep columns after
``seed``). What varies between runs besides scheme, k, rank and seed is a *sweep*, and each
swept field is a column named ``sweep.<field>`` (``sweep.grad_checkpointing``): the prefix keeps
a swept training option apart from the run's own columns and tells the statistics which columns
define a group. A study's sweep comes from its matrix.json; loose runs get one from the training
options they differ in (see :func:`collect_runs`).

``status`` is the run's :class:`alphasel.study.directory.RunState`: ``complete``, ``failed``,
``incomplete`` or ``missing``; a run whose record cannot be read is ``incomplete``, with the
reason in ``error``. Only complete runs carry results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from alphasel.errors import AlphaselError, StudyError
from alphasel.study.directory import (
    MATRIX_FILE,
    RunState,
    check_study,
    error_text,
    is_study,
    matrix_entries,
    run_folder,
    run_state,
)
from alphasel.study.spec import UNMATCHED
from alphasel.training.config import RECORD_ONLY_FIELDS
from alphasel.training.history import alpha_shift
from alphasel.training.record import COMPONENTS, RunRecord, holds_run
from alphasel.training.task_metrics import LOSSES, is_metric

SWEEP_PREFIX = "sweep."

#: Columns before the sweep columns: what the run is.
IDENTITY_COLUMNS = ["label", "scheme", "method", "k", "rank", "seed"]
#: Columns after the sweep columns: how the run went.
RESULT_COLUMNS = ["matched", "budget", "status", "error", "model_id", "headline_metric",
                  "eval_loss", "best_eval_loss", "metrics.*", "wall_s", "tokens_per_s",
                  "peak_memory_mb",
                  *COMPONENTS, "trainable_params", "also_params", "adapted_modules",
                  "adapted_blocks",
                  "alpha_shift", "evaluated_on", "run_id", "path"]
#: Every column, with the sweep columns where ``sweep.*`` stands and the runs' other final
#: metrics (summary.json's ``eval_*`` and ``harness_*``: accuracy, MCC, perplexity, a harness
#: task's acc, ...) where ``metrics.*`` stands.
TABLE_COLUMNS = [*IDENTITY_COLUMNS, "sweep.*", *RESULT_COLUMNS]
#: summary.json fields copied as they are (NaN when absent or null).
SUMMARY_FIELDS = ("eval_loss", "best_eval_loss", "wall_s", "tokens_per_s", "peak_memory_mb",
                  "trainable_params", "also_params")
#: Whole-number columns: nullable integers, so a missing value does not make them floats.
INTEGER_COLUMNS = ("k", "rank", "seed", "budget")
#: TrainConfig fields the label or the seed column already carry.
LABELLED_FIELDS = frozenset({"seed", "reselect", "reselect_every", "method"})


def sweep_columns(runs: pd.DataFrame) -> list[str]:
    """The ``sweep.<field>`` columns of a runs table, in table order."""
    return [column for column in runs.columns if str(column).startswith(SWEEP_PREFIX)]


def collect_study(study_dir: str | Path) -> pd.DataFrame:
    """One row per entry of the study's matrix.json, joined with its run record.

    Identity columns (label, scheme, method, k, rank, seed, sweep, matched, budget) come from
    the matrix, so a failed or missing run still has its place; results come from the record.
    The model of a run without a record is the study's model when its finished runs agree on
    one.
    """
    study_dir = check_study(_existing(study_dir))
    entries = matrix_entries(study_dir)
    sweep_fields = list(dict.fromkeys(key for entry in entries for key in entry["sweep"]))
    rows = []
    for entry in entries:
        run_dir = run_folder(study_dir, str(entry["run_id"]))
        row = {"label": entry["label"], "scheme": entry.get("scheme"),
               "method": (entry.get("config") or {}).get("method"),
               "k": entry.get("k"),
               "rank": entry.get("rank"), "seed": entry.get("seed"),
               **{SWEEP_PREFIX + key: _scalar(entry["sweep"].get(key)) for key in sweep_fields},
               "matched": bool(entry.get("matched", entry["label"] not in UNMATCHED)),
               "budget": entry.get("budget"), "model_id": entry.get("model_id"),
               "run_id": str(entry["run_id"]), "path": str(run_dir)}
        rows.append({**row, **_outcome(run_dir)})
    frame = _frame(rows, [SWEEP_PREFIX + key for key in sweep_fields])
    models = frame.loc[frame["status"] == RunState.COMPLETE, "model_id"].dropna().unique()
    if len(models) == 1:
        frame["model_id"] = frame["model_id"].fillna(models[0])
    return frame


def collect_runs(paths: list[str | Path]) -> pd.DataFrame:
    """The same table for loose run directories (``alphasel train --out``).

    label: the plan's scheme (``full`` for full fine-tuning), with ``:order=low`` and
    ``:rank_alloc=alpha`` when the plan says so and ``:reselect`` with re-selection, as a
    study labels its schemes. seed: the training seed. k: the plan's; rank: its modules' when
    they share one. matched: True except for ``all`` and ``full``; budget: NaN (loose runs were
    not planned to one). Training options in which the adapter runs differ (the data set too;
    not the seed, the re-selection or what only shapes the record) become ``sweep.<field>``
    columns, so runs trained differently are never averaged together; full fine-tuning keeps
    its own defaults (its learning rate, say) by design and reads NaN there.
    """
    if not paths:
        raise StudyError("no runs to compare: pass a study directory or run directories")
    records = []
    for path in paths:
        path = _existing(path)
        if is_study(path):
            raise StudyError(f"'{path}' is a study directory: compare it on its own "
                             f"(`alphasel compare {path}`), not among run directories")
        if not holds_run(path):
            raise StudyError(f"'{path}' is neither a study (no {MATRIX_FILE}) nor a run record "
                             "(no alphasel config.json): pass a study directory or run "
                             "directories written by `alphasel train`")
        records.append(RunRecord.load(path))
    swept = _differing_options(records)
    rows = []
    for record in records:
        config = record.config
        options = config.get("config") or {}
        full = config.get("method") == "full"
        label = _loose_label(record)
        row = {"label": label, "scheme": "full" if full else config.get("scheme"),
               "method": config.get("method"), "k": None if full else config.get("k"),
               "rank": _uniform_rank(record), "seed": options.get("seed"),
               **{SWEEP_PREFIX + key: None if full else _scalar(_option(config, key))
                  for key in swept},
               "matched": label.split(":")[0] not in UNMATCHED, "budget": None,
               "run_id": record.run_id, "path": str(record.path)}
        rows.append({**row, **_outcome(record.path, record)})
    return _frame(rows, [SWEEP_PREFIX + key for key in swept])


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise StudyError(f"'{path}' does not exist: pass a study directory (runs/studies/<id>) "
                         "or run directories (runs/train/<run-id>)")
    if not path.is_dir():
        raise StudyError(f"'{path}' is a file: pass a study directory or run directories")
    return path


def _outcome(run_dir: Path, record: RunRecord | None = None) -> dict[str, Any]:
    """status, error and the results of the run in ``run_dir`` (NaN unless complete)."""
    outcome: dict[str, Any] = {"status": run_state(run_dir), "error": None}
    if record is None and holds_run(run_dir):
        try:
            record = RunRecord.load(run_dir)
        except AlphaselError as err:
            # A study's run killed while writing: the study goes on, and the row says why.
            outcome.update(status=RunState.INCOMPLETE, error=str(err))
    if record is not None and record.config.get("model_id") is not None:
        outcome["model_id"] = record.config["model_id"]
    if record is not None:  # which examples the run was evaluated on (a digest of them)
        outcome["evaluated_on"] = (record.config.get("data_details") or {}).get(
            "eval_fingerprint")
    if outcome["status"] == RunState.COMPLETE and record is None:
        outcome["status"] = RunState.INCOMPLETE  # a summary without the record it finishes
    if outcome["status"] == RunState.COMPLETE:
        outcome.update(_results(record))
    elif outcome["status"] == RunState.FAILED:
        outcome["error"] = error_text(run_dir)
    return outcome


def _results(record: RunRecord) -> dict[str, Any]:
    summary = record.summary or {}
    results: dict[str, Any] = {name: _number(summary.get(name)) for name in SUMMARY_FIELDS}
    results.update({name: _number(value) for name, value in summary.items()
                    if is_metric(name) and name not in results
                    and isinstance(value, int | float | type(None))})
    results["headline_metric"] = summary.get("headline_metric")
    breakdown = summary.get("memory_breakdown") or {}
    results.update({name: _number(breakdown.get(name)) for name in COMPONENTS})
    plan = record.plan
    # With re-selection plan.json is the first round's plan; later rounds keep its budget.
    results["adapted_modules"] = len(plan.modules) if plan is not None else math.nan
    results["adapted_blocks"] = (len({m.block for m in plan.modules if m.block is not None})
                                 if plan is not None else math.nan)
    results["alpha_shift"] = alpha_shift(record.alpha_history())
    return results


def _loose_label(record: RunRecord) -> str:
    config = record.config
    options = config.get("config") or {}
    if config.get("method") == "full":
        return "full"
    plan = record.plan
    parts = [str(config.get("scheme") or (plan.scheme if plan else "unknown"))]
    if plan is not None and plan.order == "low":
        parts.append("order=low")
    if plan is not None and plan.rank_alloc == "alpha":
        parts.append("rank_alloc=alpha")
    if options.get("reselect") or options.get("reselect_every"):
        parts.append("reselect")
    return ":".join(parts)


def _uniform_rank(record: RunRecord) -> int | None:
    """The plan's rank when every module has the same one (rank by alpha: None)."""
    if record.plan is None or record.config.get("method") == "full":
        return None
    ranks = {module.rank for module in record.plan.modules}
    return ranks.pop() if len(ranks) == 1 else None


def _option(config: dict, key: str) -> Any:
    return config.get("data") if key == "data" else (config.get("config") or {}).get(key)


def _differing_options(records: list[RunRecord]) -> list[str]:
    """Training options (and the data set) whose values differ among the adapter runs."""
    adapter_runs = [record.config for record in records
                    if record.config.get("method") != "full"]
    keys = dict.fromkeys(["data", *(key for config in adapter_runs
                                    for key in (config.get("config") or {}))])
    differing = []
    for key in keys:
        if key in RECORD_ONLY_FIELDS or key in LABELLED_FIELDS:
            continue
        values = {json.dumps(_option(config, key), sort_keys=True, default=str)
                  for config in adapter_runs}
        if len(values) > 1:
            differing.append(key)
    return differing


def _scalar(value: Any) -> Any:
    """A sweep value that a table can group by: lists and objects become their JSON text."""
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return value


def _number(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The runs table's final-metric columns but the eval loss (those ``metrics.*`` stands
    for), in table order."""
    return [column for column in runs.columns if is_metric(str(column))
            and column not in LOSSES]


def _frame(rows: list[dict[str, Any]], sweeps: list[str]) -> pd.DataFrame:
    metrics = list(dict.fromkeys(key for row in rows for key in row if is_metric(key)
                                 and key not in SUMMARY_FIELDS))
    at = RESULT_COLUMNS.index("metrics.*")
    columns = [*IDENTITY_COLUMNS, *sweeps, *RESULT_COLUMNS[:at], *metrics,
               *RESULT_COLUMNS[at + 1:]]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    for column in sweeps:
        # As written: a swept batch size stays 4, not 4.0 beside a run without one.
        frame[column] = pd.Series([row.get(column) for row in rows], index=frame.index,
                                  dtype=object)
    for column in INTEGER_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in [*SUMMARY_FIELDS, *metrics, *COMPONENTS, "adapted_modules",
                   "adapted_blocks", "alpha_shift"]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["matched"] = frame["matched"].astype(bool)
    return frame
