"""The run record: one directory per training run, the contract between TRAIN and STUDY/PLOTS.

    runs/train/<run-id>/
      config.json        resolved TrainConfig, model, data fingerprint, versions, command line
      plan.json          the InjectionPlan trained (absent for full fine-tuning)
      analysis.csv       the alpha table an inline plan came from (with --scheme, no --plan)
      metrics.jsonl      one object per logged step, per evaluation, per alpha measurement
      alpha_history.csv  alpha of the adapted modules' effective weights, epoch 0 and after each
      selections.jsonl   with re-selection: the modules adapted in each round (epoch)
      folded/round-N/    with re-selection: round N's adapter, folded into the base after it
      generations.jsonl  greedy completions before and after training (language models)
      summary.json       written last; status "complete" marks a finished run
      adapter/           the PEFT adapter, or the full weights for full fine-tuning
      checkpoints/       Trainer checkpoints (--save-every), for --resume

Every JSON file is written to a temporary name and renamed, so no reader sees half a file; a
directory without a complete summary.json is not a finished run, whatever else it holds.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from alphasel.atomic import write_text
from alphasel.errors import RunError
from alphasel.jsonfiles import append_jsonl, finite_or_none, read_jsonl, write_json
from alphasel.paths import model_slug, train_runs_dir, utc_stamp
from alphasel.plan import InjectionPlan
from alphasel.training.distributed import global_batch
from alphasel.training.history import ALPHA_COLUMNS, read_alpha_history

STATUS_COMPLETE = "complete"
#: Marks config.json and summary.json as an alphasel run record (a model checkpoint's
#: config.json in adapter/ or checkpoints/ is not one), with the layout's version.
RECORD_KIND = "alphasel-train-run"
SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
PLAN_FILE = "plan.json"
ANALYSIS_FILE = "analysis.csv"
METRICS_FILE = "metrics.jsonl"
GENERATIONS_FILE = "generations.jsonl"
SUMMARY_FILE = "summary.json"
ALPHA_FILE = "alpha_history.csv"
SELECTIONS_FILE = "selections.jsonl"
#: The final evaluation's per-example predictions (a language model's per-example loss).
PREDICTIONS_FILE = "eval_predictions.jsonl"
FOLDED_DIR = "folded"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
#: A run's own files and directories (what --overwrite removes).
RUN_FILES = (CONFIG_FILE, PLAN_FILE, ANALYSIS_FILE, METRICS_FILE, GENERATIONS_FILE,
             ALPHA_FILE, SELECTIONS_FILE, PREDICTIONS_FILE, SUMMARY_FILE)
RUN_DIRS = (ADAPTER_DIR, CHECKPOINTS_DIR, TENSORBOARD_DIR, FOLDED_DIR)


def make_run_id(model_id: str, label: str) -> str:
    """``<UTC time>-<model>-<label>``: sortable by time, readable, unique per call."""
    return f"{utc_stamp()}-{model_slug(model_id)}-{label}"


def _is_record_file(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("record") == RECORD_KIND
    except (OSError, ValueError, AttributeError):
        return False


def holds_run(path: Path) -> bool:
    """Whether ``path`` is an alphasel run directory (finished or not)."""
    path = Path(path)
    return path.is_dir() and (_is_record_file(path / CONFIG_FILE)
                              or _is_record_file(path / SUMMARY_FILE))


def is_complete(path: Path) -> bool:
    summary = Path(path) / SUMMARY_FILE
    if not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("status") == STATUS_COMPLETE
    except (json.JSONDecodeError, AttributeError):
        return False


def last_checkpoint(checkpoints: Path) -> tuple[str | None, int]:
    """The newest complete Trainer checkpoint and its step, or (None, 0).

    transformers writes trainer_state.json last; a checkpoint without it was cut short by
    the interruption and would restart training from step 0."""
    if not checkpoints.is_dir():
        return None, 0
    complete = [path for path in checkpoints.glob("checkpoint-*")
                if (path / "trainer_state.json").is_file()]
    if not complete:
        return None, 0
    newest = max(complete, key=lambda path: int(path.name.rsplit("-", 1)[1]))
    step = json.loads((newest / "trainer_state.json").read_text())["global_step"]
    return str(newest), int(step)


class RunWriter:
    """Writes one run directory. Only the main process of a distributed run makes one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @staticmethod
    def check_target(path: Path, overwrite: bool = False) -> None:
        """Refuse ``path`` as a new run's directory, writing nothing: a file, a directory that
        holds a run (unless ``overwrite``), or one that holds another tool's files."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"--out '{path}' is a file: pass a directory for the run record")
        if holds_run(path):
            if not overwrite:
                state = "a complete run" if is_complete(path) else "an unfinished run"
                raise RunError(f"--out '{path}' already holds {state}: pass --overwrite to "
                               "replace it, --resume to continue it, or another --out")
        elif path.is_dir() and any(item.is_file() for item in path.rglob("*")):
            raise RunError(f"--out '{path}' is a non-empty directory that holds no alphasel "
                           "run: pass a new or empty directory (a run never writes into "
                           "another tool's files)")

    @classmethod
    def create(cls, path: Path, overwrite: bool = False) -> RunWriter:
        """A fresh run directory at ``path`` (see :meth:`check_target`); ``overwrite`` removes
        an old run's files (and nothing else)."""
        path = Path(path)
        cls.check_target(path, overwrite)
        if holds_run(path):
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
            for name in RUN_DIRS:
                shutil.rmtree(path / name, ignore_errors=True)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot create the run directory --out '{path}' ({err}): pass a "
                           "writable directory") from err
        return cls(path)

    @classmethod
    def reopen(cls, path: Path) -> RunWriter:
        """The directory of an interrupted run, to continue it."""
        path = Path(path)
        if not _is_record_file(path / CONFIG_FILE):
            raise RunError(f"--resume '{path}' holds no run record (no alphasel {CONFIG_FILE}):"
                           " pass the directory of a run started by `alphasel train`")
        if is_complete(path):
            raise RunError(f"--resume '{path}' is already complete: nothing to continue; start "
                           "a new run instead")
        return cls(path)

    def write_config(self, config: dict) -> None:
        write_json(self.path / CONFIG_FILE, {"record": RECORD_KIND,
                                             "schema_version": SCHEMA_VERSION, **config})

    def write_plan(self, plan: InjectionPlan) -> None:
        plan.save(self.path / PLAN_FILE)

    def write_analysis(self, table: pd.DataFrame) -> None:
        from alphasel.table import write_table

        write_table(table, self.path / ANALYSIS_FILE)

    def append(self, name: str, row: dict) -> None:
        """Append one JSON line, flushed and synced, so a killed run keeps every line written."""
        append_jsonl(self.path / name, row)

    def log_metrics(self, row: dict) -> None:
        self.append(METRICS_FILE, row)

    def keep_metrics_through(self, step: int) -> None:
        """Drop metrics logged after ``step`` (a resumed run repeats them from its checkpoint),
        so the finished file has each step once."""
        path = self.path / METRICS_FILE
        kept = [row for row in read_jsonl(path) if row.get("step", 0) <= step]
        write_text(path, "".join(json.dumps(row, allow_nan=False) + "\n" for row in kept))

    def append_alpha(self, rows: list[dict]) -> None:
        """Append one measurement's rows to alpha_history.csv (its header with the first)."""
        path = self.path / ALPHA_FILE
        pd.DataFrame(rows, columns=ALPHA_COLUMNS).to_csv(path, mode="a", index=False,
                                                         header=not path.exists())

    def keep_alpha_through(self, step: int) -> None:
        """Drop alpha rows measured after ``step``: a resumed run measures them again."""
        from alphasel.table import write_table

        history = read_alpha_history(self.path / ALPHA_FILE)
        if history is not None and not history.empty:
            write_table(history[history["step"] <= step], self.path / ALPHA_FILE)

    def write_predictions(self, rows: list[dict]) -> None:
        """eval_predictions.jsonl, whole: the final evaluation's per-example rows."""
        write_text(self.path / PREDICTIONS_FILE,
                   "".join(json.dumps(finite_or_none(row), allow_nan=False) + "\n"
                           for row in rows))

    def write_summary(self, summary: dict) -> None:
        """Write summary.json; call it last, after everything else is on disk."""
        write_json(self.path / SUMMARY_FILE, {"record": RECORD_KIND, "status": STATUS_COMPLETE,
                                              **summary})


def run_directory(out: str | Path | None, resume: str | Path | None, overwrite: bool,
                  model_id: str, label: str, data_name: str, data_fingerprint: str,
                  world_size: int) -> Path:
    """Where a run's record goes, checked before anything is written there: ``out``, or a new
    ``runs/train/<run-id>``; for ``resume``, the interrupted run's directory, refused unless it
    started with the same data and as many processes."""
    if resume is None:
        path = Path(out) if out is not None else train_runs_dir() / make_run_id(model_id, label)
        RunWriter.check_target(path, overwrite)
        return path
    path = RunWriter.reopen(Path(resume)).path
    recorded = RunRecord.load(path).config
    if recorded.get("data_fingerprint") != data_fingerprint:
        raise RunError(f"--resume '{path}': the data '{data_name}' differs from what the "
                       "run started with (fingerprint changed): resume with the same data and "
                       "options, or start a new run")
    processes = recorded.get("world_size")
    options = recorded.get("config", {})
    per_process = (options.get("batch_size", 0), options.get("grad_accum", 0))
    now = global_batch(*per_process, world_size)
    started = (recorded.get("batch") or {}).get("global") or global_batch(*per_process,
                                                                          processes or 0)
    if started != now:
        raise RunError(f"--resume '{path}': the run started with a global batch of {started} "
                       f"({processes} process(es)); this launch has {world_size}, a global "
                       f"batch of {now}: launch {processes} process(es)")
    return path


@dataclass
class RunRecord:
    """A run directory read back: what ``alphasel.train`` returns and studies read."""

    path: Path
    config: dict
    summary: dict | None
    plan: InjectionPlan | None

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        path = Path(path)
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise RunError(f"'{path}' holds no run record ({CONFIG_FILE} is missing): pass a "
                           "directory written by `alphasel train`")
        try:
            config = json.loads(config_path.read_text())
            summary = (json.loads((path / SUMMARY_FILE).read_text())
                       if (path / SUMMARY_FILE).is_file() else None)
        except json.JSONDecodeError as err:
            raise RunError(f"the run record in '{path}' is corrupt ({err}): run it again with "
                           "--overwrite") from err
        plan = InjectionPlan.load(path / PLAN_FILE) if (path / PLAN_FILE).is_file() else None
        return cls(path, config, summary, plan)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return bool(self.summary) and self.summary.get("status") == STATUS_COMPLETE

    def metrics(self) -> pd.DataFrame:
        """metrics.jsonl as a table: one row per logged step or evaluation."""
        return pd.DataFrame(read_jsonl(self.path / METRICS_FILE))

    def generations(self) -> list[dict]:
        return read_jsonl(self.path / GENERATIONS_FILE)

    def alpha_history(self) -> pd.DataFrame | None:
        """alpha_history.csv in measurement order, types fixed (see
        :func:`alphasel.training.history.read_alpha_history`); None when the run measured none."""
        return read_alpha_history(self.path / ALPHA_FILE)


#: summary.json's memory_breakdown keys (see :mod:`alphasel.training.memory`), in the order
#: figures stack them. Kept here, beside the record's other names, so that reading records
#: never imports transformers.
COMPONENTS = ("frozen_weights_mb", "trainable_weights_mb", "gradients_mb", "optimizer_state_mb",
              "activations_mb", "inputs_mb")
#: Columns of :func:`list_runs`, in order.
LIST_COLUMNS = ["run_id", "model", "data", "method", "scheme", "k", "trainable_params",
               "best_eval_loss", "wall_s", "peak_memory_mb", *COMPONENTS, "status"]


def run_directories(root: Path) -> list[Path]:
    """Run directories at or below ``root``, in path order (run ids begin with their UTC start
    time, so runs under one parent sort oldest first). A run's own subdirectories (adapter/,
    checkpoints/, whose model config.json files are not run records) are not searched."""
    if holds_run(root):
        return [root]
    found = []
    for child in sorted(path for path in root.iterdir() if path.is_dir()):
        found.extend(run_directories(child))
    return found


def list_runs(root: str | Path | None = None) -> pd.DataFrame:
    """One row per run directory under ``root`` (default ``runs/train``).

    ``root`` may itself be a run directory. A run without a complete summary reads
    ``incomplete``; one whose record cannot be read reads ``corrupt``.
    """
    default = root is None
    root = Path(root) if root is not None else train_runs_dir()
    if default and not root.exists():
        return pd.DataFrame(columns=LIST_COLUMNS)  # no run recorded yet
    if not root.is_dir():
        raise RunError(f"'{root}' is not a directory: pass a directory of runs (default "
                       f"{train_runs_dir()})")
    folders = run_directories(root)
    rows = []
    for folder in folders:
        run_id = str(folder.relative_to(root)) if folder != root else folder.name
        try:
            record = RunRecord.load(folder)
        except (RunError, ValueError):
            rows.append({"run_id": run_id, "status": "corrupt"})
            continue
        config, summary = record.config, record.summary or {}
        rows.append({
            "run_id": run_id,
            "model": config.get("model_id"), "data": config.get("data"),
            "method": config.get("method"), "scheme": config.get("scheme"),
            "k": config.get("k"), "trainable_params": summary.get("trainable_params"),
            "best_eval_loss": summary.get("best_eval_loss"), "wall_s": summary.get("wall_s"),
            "peak_memory_mb": summary.get("peak_memory_mb"),
            **{key: (summary.get("memory_breakdown") or {}).get(key) for key in COMPONENTS},
            "status": STATUS_COMPLETE if record.complete else "incomplete",
        })
    return pd.DataFrame(rows, columns=LIST_COLUMNS)
