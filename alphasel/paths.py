"""Where every command writes by default: ``runs/`` (``$ALPHASEL_RUNS``) and its folders, with
the names files and folders get there (runs/README.md shows the layout)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path


def runs_dir() -> Path:
    """Where commands write by default: ``$ALPHASEL_RUNS`` or ``./runs``."""
    return Path(os.environ.get("ALPHASEL_RUNS", "runs"))


def analyses_dir() -> Path:
    """``runs/analyses``: one folder per model, and ``combined/`` for several at once."""
    return runs_dir() / "analyses"


def latest_analysis_pointer() -> Path:
    """The file that names the latest analysis table (``runs/analyses/LATEST``)."""
    return analyses_dir() / "LATEST"


def plans_dir() -> Path:
    """``runs/plans``: injection plans written by `alphasel plan`."""
    return runs_dir() / "plans"


def plots_dir() -> Path:
    """``runs/plots``: figures written by `alphasel plot`."""
    return runs_dir() / "plots"


def train_runs_dir() -> Path:
    """``runs/train``: one directory per training run."""
    return runs_dir() / "train"


def studies_dir() -> Path:
    """``runs/studies``: one directory per selection study."""
    return runs_dir() / "studies"


def model_slug(model_id: str) -> str:
    """A filesystem-safe name for a model id or path (``meta-llama/Llama-2-7b-hf`` →
    ``meta-llama--Llama-2-7b-hf``)."""
    text = str(model_id).rstrip("/\\")
    if os.sep in text or "/" in text:
        path = Path(text)
        # Local paths: the last component is what a user recognises; hub ids keep the org.
        text = path.name if path.exists() else text.replace("/", "--")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return slug or "model"


def utc_stamp(microseconds: bool = True) -> str:
    """The UTC time as names begin with it (``20261202T075632461102Z``), so names sort by time;
    with microseconds, two names made one after the other differ."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ" if microseconds else "%Y%m%dT%H%M%SZ")

