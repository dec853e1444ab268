"""`alphasel compare STUDY_DIR` or `alphasel compare RUN RUN ...`: the comparison table.

Prints one line per group (label × budget or k × rank × sweep, per model) and writes the whole
table as CSV: into the study directory as table.csv, or to ``--out FILE`` (.csv, .json or
.parquet). Loose runs write nothing without ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from alphasel.errors import StudyError
from alphasel.study.collect import collect_runs, collect_study, is_study, sweep_columns
from alphasel.study.stats import BASELINES, comparison_table, format_interval
from alphasel.table import table_format, write_table

TABLE_FILE = "table.csv"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare a study's schemes, or training runs, across seeds",
        description="One line per scheme and setting: runs complete, failed and missing, final "
        "and best eval loss (mean and 95% t-interval over seeds), trainable parameters against "
        "the budget, wall time, memory, alpha shift, and the seed-paired difference in final "
        "eval loss against random and all (negative: better than the baseline).")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="a study directory (runs/studies/<id>), or run directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the table here (.csv, .json, .parquet); default: table.csv "
                        "in the study directory, nothing for loose runs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.out is not None:
        table_format(args.out)  # an unusable --out fails before anything is read or written
    study = args.paths[0] if len(args.paths) == 1 and is_study(args.paths[0]) else None
    runs = collect_study(study) if study is not None else collect_runs(args.paths)
    models = list(runs["model_id"].dropna().unique())
    if len(models) > 1:
        print(f"alphasel compare: warning: the runs are of {len(models)} models "
              f"({', '.join(map(str, models))}): each model's runs are compared on their own",
              file=sys.stderr)
    table = comparison_table(runs)
    out = args.out if args.out is not None else (study / TABLE_FILE if study else None)
    if out is not None:
        try:
            write_table(table, out)
        except OSError as err:
            raise StudyError(f"cannot write the table to '{out}' ({err}): pass a writable "
                             "--out") from None
    print(format_table(table, several_models=len(models) > 1))
    if out is not None:
        print(f"\nwrote {out}")


def format_table(table: pd.DataFrame, several_models: bool = False) -> str:
    """The comparison table as text: intervals as ``mean [low, high]``, counts as integers,
    unmatched baselines marked ``(unmatched)`` after their label."""
    if table.empty:
        return "no runs"
    shown = pd.DataFrame(index=table.index)
    if several_models:
        shown["model"] = table["model_id"].fillna("-")
    shown["label"] = [label if matched else f"{label} (unmatched)"
                      for label, matched in zip(table["label"], table["matched"], strict=True)]
    for column in ("budget", "k", "rank"):
        if column in table:
            shown[column] = table[column].map(_whole)
    for column in sweep_columns(table):
        shown[column.removeprefix("sweep.")] = table[column].map(
            lambda value: "-" if pd.isna(value) else str(value))
    for column in ("n", "failed", "missing"):
        shown[column] = table[column]
    for metric, title in (("eval_loss", "eval_loss"), ("best_eval_loss", "best_eval"),
                          ("eval_accuracy", "accuracy")):
        if f"{metric}_mean" in table:
            shown[title] = [
                format_interval(mean, low, high, n) or "-" for mean, low, high, n in zip(
                    table[f"{metric}_mean"], table[f"{metric}_ci_low"],
                    table[f"{metric}_ci_high"], table["n"], strict=True)]
    for baseline in BASELINES:
        shown[f"vs_{baseline}"] = table[f"vs_{baseline}"].replace("", "-")
    shown["trainable"] = table["trainable_params"].map(
        lambda value: "-" if pd.isna(value) else f"{value:,.0f}")
    shown["budget_gap"] = table["budget_gap"].map(
        lambda value: "-" if pd.isna(value) else f"{value:+.1%}")
    shown["modules"] = table["adapted_modules"].map(_whole)
    shown["alpha_shift"] = table["alpha_shift"].map(
        lambda value: "-" if pd.isna(value) else f"{value:+.3f}")
    for column, title in (("wall_s", "wall_s"), ("tokens_per_s", "tok/s"),
                          ("peak_memory_mb", "peak_mb")):
        shown[title] = table[column].map(lambda value: "-" if pd.isna(value) else f"{value:.0f}")
    return shown.to_string(index=False)


def _whole(value: object) -> str:
    """A count or size: whole numbers without decimals, a group mean that is not one with one."""
    if pd.isna(value):
        return "-"
    number = float(value)
    return f"{number:.0f}" if number.is_integer() else f"{number:.1f}"
