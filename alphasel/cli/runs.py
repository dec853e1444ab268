"""`alphasel runs [DIR]`: a table of recorded training runs (default runs/train)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from alphasel.training.record import COMPONENTS, list_runs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runs", help="table of recorded training runs",
        description="One line per run directory: model, data, method, scheme, k, trainable "
        "parameters, best eval loss, wall time, peak memory, memory by component (MB: frozen "
        "and trained weights, gradients, optimizer state, activations, inputs) and status.")
    parser.add_argument("dir", nargs="?", type=Path,
                        help="a directory of runs, or one run (default runs/train)")
    parser.set_defaults(func=run)


#: The memory components' headers in the table (MB): weights frozen and trained, gradients,
#: optimizer state, activations, inputs.
SHORT_NAMES = dict(zip(COMPONENTS, ("frozen_mb", "trained_mb", "grads_mb", "optim_mb",
                                    "activ_mb", "inputs_mb"), strict=True))


def format_runs(table: pd.DataFrame) -> str:
    if table.empty:
        return "no runs"
    shown = table.copy()
    shown["trainable_params"] = shown["trainable_params"].map(
        lambda v: "-" if pd.isna(v) else f"{int(v):,}")
    shown["best_eval_loss"] = shown["best_eval_loss"].map(
        lambda v: "-" if pd.isna(v) else f"{v:.4f}")
    shown["wall_s"] = shown["wall_s"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}")
    shown["peak_memory_mb"] = shown["peak_memory_mb"].map(
        lambda v: "-" if pd.isna(v) else f"{v:.0f}")
    shown["k"] = shown["k"].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    for column in COMPONENTS:
        shown[column] = shown[column].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
    shown = shown.fillna("-").rename(columns={"trainable_params": "trainable",
                                              "best_eval_loss": "best_eval",
                                              "peak_memory_mb": "peak_mb", **SHORT_NAMES})
    return shown.to_string(index=False)


def run(args: argparse.Namespace) -> None:
    print(format_runs(list_runs(args.dir)))
