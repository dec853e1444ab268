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
from alphasel.study.collect import collect_runs, collect_study
from alphasel.study.directory import TABLE_FILE, is_study
from alphasel.study.display import display_table
from alphasel.study.stats import comparison_table, verdicts
from alphasel.table import table_format, write_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare a study's schemes, or training runs, across seeds",
        description="One line per scheme and setting: runs complete, failed and missing, final "
        "and best eval loss (mean and 95% t-interval over seeds), trainable parameters against "
        "the budget, wall time, memory, alpha shift, each task metric the runs have, and the "
        "seed-paired difference in the final --metric (default eval loss, where negative is "
        "better; for accuracy-like metrics positive is) against random and all with its "
        "Holm-adjusted p-value; then one verdict line per comparison.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="a study directory (runs/studies/<id>), or run directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the table here (.csv, .json, .parquet); default: table.csv "
                        "in the study directory, nothing for loose runs")
    parser.add_argument("--metric", default=None,
                        help="the metric the paired differences and verdicts compare (default: "
                        "the runs' headline: eval_loss for language models, accuracy, or a GLUE "
                        "config's own; any eval_* or harness_* column the runs have)")
    add_comparison_options(parser)
    parser.set_defaults(func=run)


def add_comparison_options(parser: argparse.ArgumentParser) -> None:
    """--baseline and --effect: what the comparison table compares with, and the effect whose
    seeds it counts (compare, study and plot compare take them alike)."""
    parser.add_argument("--baseline", action="append", default=[], metavar="LABEL",
                        help="also compare every label with this one (besides random and all; "
                        "repeatable)")
    parser.add_argument("--effect", type=float, default=None, metavar="D",
                        help="say how many seeds would detect a difference of D (in the "
                        "compared metric) at 80%% power")


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
    table = comparison_table(runs, args.metric, tuple(args.baseline), args.effect)
    out = args.out if args.out is not None else (study / TABLE_FILE if study else None)
    if out is not None:
        try:
            write_table(table, out)
        except OSError as err:
            raise StudyError(f"cannot write the table to '{out}' ({err}): pass a writable "
                             "--out") from None
    print(format_table(table, several_models=len(models) > 1))
    print(format_verdicts(table))
    if out is not None:
        print(f"\nwrote {out}")


def format_verdicts(table: pd.DataFrame) -> str:
    """The verdict lines under a heading (:func:`alphasel.study.stats.verdicts`)."""
    lines = verdicts(table)
    if not lines:
        return "\nno label shares two or more seeds with a baseline: nothing is compared"
    return (f"\nverdicts (paired t-tests, Holm-corrected 5% level over "
            f"{table.attrs.get('comparisons', 0)} comparisons; \"could detect\": 80% power):\n"
            + "\n".join(f"  {line}" for line in lines))


def format_table(table: pd.DataFrame, several_models: bool = False) -> str:
    """The comparison table as text: intervals as ``mean [low, high]``, counts as integers,
    unmatched baselines marked ``(unmatched)`` after their label."""
    if table.empty:
        return "no runs"
    return display_table(table, several_models).to_string(index=False)
