"""`alphasel plot NAME [TABLE] [--vs OTHER] [--out FILE]`: draw a figure of an alpha table.

`alphasel plot training RUN_DIR [--figure trajectories|surface|change] [--out FILE]` draws a
training run's alpha history instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from alphasel.errors import PlotError
from alphasel.plots import PLOT_NAMES, check_output_path, check_plot_name, figure, save_figure
from alphasel.table import latest_analysis, metadata, model_slug, read_table, runs_dir
from alphasel.training_plots import TRAINING_FIGURES, training_figure

#: The PLOT that draws a training run's alpha history (RUN_DIR in place of TABLE).
TRAINING_PLOT = "training"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw an alpha table (3D surface, heatmap, layer-wise lines, per-kind boxes) or a "
             "training run's alpha history",
        description="Draw a figure of an alpha table as a self-contained HTML file (or a "
                    "static image with kaleido installed) and print its path.",
    )
    # A plain string, not argparse choices, so a wrong name is one line and exit 2 like every
    # other input error rather than a usage dump.
    parser.add_argument("plot", metavar="PLOT",
                        help=f"one of {', '.join(PLOT_NAMES)}, or {TRAINING_PLOT}")
    parser.add_argument("table", nargs="?", default=None, metavar="TABLE",
                        help="alpha table (.csv, .parquet, .json); default: the latest "
                             f"analysis. For {TRAINING_PLOT}: the run directory (RUN_DIR)")
    parser.add_argument("--vs", default=None, metavar="OTHER",
                        help="second alpha table: draw alpha(TABLE) − alpha(OTHER) matched by "
                             "module name (surface and heatmap only)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="where to write: FILE.html, or FILE.png/.svg/.pdf with kaleido; "
                             "default: runs/plots/<model>-<plot>.html")
    parser.add_argument("--figure", default=None, metavar="FIGURE",
                        help=f"with {TRAINING_PLOT}: one of {', '.join(TRAINING_FIGURES)} "
                             "(default: trajectories)")
    parser.set_defaults(func=run)


def _slug(path: Path, table: pd.DataFrame) -> str:
    return model_slug(metadata(table).get("model_id") or path.stem)


def _default_out(plot: str, table_path: Path, table: pd.DataFrame,
                 vs_path: Path | None, other: pd.DataFrame | None) -> Path:
    name = f"{_slug(table_path, table)}-{plot}"
    if vs_path is not None and other is not None:
        versus = _slug(vs_path, other)
        # Two analyses of one model: their folders (time-estimator) tell them apart.
        if versus == _slug(table_path, table):
            versus = model_slug(vs_path.parent.name or vs_path.stem)
        name += f"-vs-{versus}"
    return runs_dir() / "plots" / f"{name}.html"


def run_training(args: argparse.Namespace) -> Path:
    """`alphasel plot training RUN_DIR`: draw one figure of the run's alpha history."""
    if args.table is None:
        raise PlotError(f"`alphasel plot {TRAINING_PLOT}` needs a run directory: "
                        f"`alphasel plot {TRAINING_PLOT} runs/train/<run-id>` "
                        "(`alphasel runs` lists them)")
    if args.vs is not None:
        raise PlotError(f"--vs compares alpha tables; it does not apply to `plot {TRAINING_PLOT}`")
    if args.out is not None:
        check_output_path(args.out)
    figure_name = args.figure or "trajectories"
    run_dir = Path(args.table)
    fig = training_figure(figure_name, run_dir)
    out = args.out or (runs_dir() / "plots"
                       / f"{model_slug(run_dir.resolve().name)}-training-{figure_name}.html")
    path = save_figure(fig, out)
    print(path)
    return path


def run(args: argparse.Namespace) -> Path:
    if args.plot == TRAINING_PLOT:
        return run_training(args)
    if args.figure is not None:
        raise PlotError(f"--figure picks a figure of `plot {TRAINING_PLOT}`; for an alpha table "
                        f"name the figure as PLOT: `alphasel plot {args.figure} TABLE`")
    # Check what needs no table first, so a typo is reported before any reading.
    check_plot_name(args.plot)
    if args.out is not None:
        check_output_path(args.out)
    table_path = Path(args.table) if args.table else latest_analysis()
    table = read_table(table_path)
    other = read_table(args.vs) if args.vs else None
    fig = figure(args.plot, table, other)
    vs_path = Path(args.vs) if args.vs else None
    out = args.out or _default_out(args.plot, table_path, table, vs_path, other)
    path = save_figure(fig, out)
    print(path)
    return path
