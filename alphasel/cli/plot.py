"""`alphasel plot NAME [TABLE] [--vs OTHER] [--out FILE]`: draw a figure of an alpha table.

`alphasel plot training RUN_DIR [--figure trajectories|surface|change] [--out FILE]` draws a
training run's alpha history instead.

`alphasel plot compare STUDY_DIR | RUN_DIR... [--figure loss_curves|final_loss|cost|alpha_shift|
report] [--smooth N] [--metric M] [--out FILE]` draws runs compared across seeds: a study's
report page (the default for a study), or one figure (final_loss by default for loose runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from alphasel.cli.compare import add_comparison_options
from alphasel.columns import metadata
from alphasel.errors import PlotError
from alphasel.paths import model_slug, plots_dir
from alphasel.plots.comparison import STUDY_FIGURES, check_figure_options, study_figure
from alphasel.plots.output import check_output_path, check_plotlyjs, save_figure
from alphasel.plots.report import parse_formats, write_report
from alphasel.plots.tables import PLOT_NAMES, check_plot_name, figure
from alphasel.plots.training import TRAINING_FIGURES, training_figure
from alphasel.study.collect import collect_runs, collect_study
from alphasel.study.directory import FIGURES_DIR, REPORT_FILE, is_study
from alphasel.table import latest_analysis, read_table

#: The PLOT that draws a training run's alpha history (RUN_DIR in place of TABLE).
TRAINING_PLOT = "training"
#: The PLOT that compares training runs across seeds (a study or run directories).
COMPARE_PLOT = "compare"
#: compare's --figure that writes a study's whole report page.
REPORT_FIGURE = "report"


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
                        help=f"one of {', '.join(PLOT_NAMES)}, {TRAINING_PLOT} or "
                             f"{COMPARE_PLOT}")
    # Several only for compare (run directories); the others take one and say so.
    parser.add_argument("table", nargs="*", default=[], metavar="TABLE",
                        help="alpha table (.csv, .parquet, .json); default: the latest "
                             f"analysis. For {TRAINING_PLOT}: the run directory (RUN_DIR). "
                             f"For {COMPARE_PLOT}: a study directory, or run directories")
    parser.add_argument("--vs", default=None, metavar="OTHER",
                        help="second alpha table: draw alpha(TABLE) − alpha(OTHER) matched by "
                             "module name (surface and heatmap only)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="where to write: FILE.html, or FILE.png/.svg/.pdf with kaleido; "
                             "default: runs/plots/<model>-<plot>.html")
    parser.add_argument("--figure", default=None, metavar="FIGURE",
                        help=f"with {TRAINING_PLOT}: one of {', '.join(TRAINING_FIGURES)} "
                             f"(default: trajectories); with {COMPARE_PLOT}: one of "
                             f"{', '.join(STUDY_FIGURES)} or {REPORT_FIGURE} (default: "
                             f"{REPORT_FIGURE} for a study, final_loss for runs)")
    parser.add_argument("--smooth", type=int, default=None, metavar="N",
                        help=f"with {COMPARE_PLOT}: loss curves as a moving average over N "
                             "logged points per run")
    parser.add_argument("--metric", default=None, metavar="METRIC",
                        help=f"with {COMPARE_PLOT}: loss_curves of eval_loss (default) or loss "
                             "(training); final_loss and forest of eval_loss (default), "
                             "best_eval_loss or eval_accuracy")
    parser.add_argument("--paired", nargs="?", const="random", default=None, metavar="LABEL",
                        help=f"with {COMPARE_PLOT} --figure loss_curves: each run's curve minus "
                             "its seed's run of LABEL (default random)")
    parser.add_argument("--plotlyjs", default=None,
                        help=f"with {COMPARE_PLOT}'s report: directory (default), inline or cdn")
    parser.add_argument("--format", default=None, metavar="FORMATS",
                        help=f"with {COMPARE_PLOT}'s report: also png, svg and/or pdf figures")
    add_comparison_options(parser)
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
    return plots_dir() / f"{name}.html"


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
    out = args.out or (plots_dir()
                       / f"{model_slug(run_dir.resolve().name)}-training-{figure_name}.html")
    path = save_figure(fig, out)
    print(path)
    return path


def _figure_out(study: Path | None, name: str, smooth: int | None, metric: str | None) -> Path:
    """Where `plot compare --figure NAME` writes by default: beside the study's report
    figures (a name of its own when the options differ from the report's), or runs/plots/."""
    stem = name + (f"-{metric}" if metric else "") + (
        f"-smooth{smooth}" if smooth and smooth > 1 else "")
    if study is not None:
        return study / FIGURES_DIR / f"{stem}.html"
    return plots_dir() / f"compare-{stem}.html"


def run_compare(args: argparse.Namespace) -> Path:
    """`alphasel plot compare STUDY | RUN...`: a study's report page, or one study figure."""
    if not args.table:
        raise PlotError(f"`alphasel plot {COMPARE_PLOT}` needs a study directory or run "
                        f"directories: `alphasel plot {COMPARE_PLOT} runs/studies/<id>`")
    if args.vs is not None:
        raise PlotError(f"--vs compares alpha tables; it does not apply to `plot {COMPARE_PLOT}`")
    paths = [Path(path) for path in args.table]
    study = paths[0] if len(paths) == 1 and is_study(paths[0]) else None
    name = args.figure or (REPORT_FIGURE if study is not None else "final_loss")
    # Every option is checked before a run is read, so a typo is reported at once.
    if name == REPORT_FIGURE:
        if study is None:
            raise PlotError(f"--figure {REPORT_FIGURE} is a study's page: pass one study "
                            "directory, or draw one figure of these runs with --figure "
                            f"{'|'.join(STUDY_FIGURES)}")
        if args.paired is not None:
            raise PlotError(f"--paired shapes one figure; the {REPORT_FIGURE} shows them all: "
                            "drop --paired, or add --figure loss_curves")
        check_figure_options("loss_curves", args.smooth)
        formats = parse_formats(args.format)
        check_plotlyjs(args.plotlyjs or "directory")
        if args.out is not None and Path(args.out).suffix.lower() != ".html":
            raise PlotError(f"cannot write the study report to '{args.out}': the report is "
                            "one HTML page; use a file ending in .html")
    elif name not in STUDY_FIGURES:
        raise PlotError(f"unknown compare figure '{name}': choose one of "
                        f"{', '.join(STUDY_FIGURES)} or {REPORT_FIGURE} (--figure)")
    else:
        if args.plotlyjs is not None or args.format is not None:
            raise PlotError(f"--plotlyjs and --format shape a study's {REPORT_FIGURE}; for one "
                            "figure, name its file with --out (.html, .png, .svg, .pdf)")
        check_figure_options(name, args.smooth, args.metric, args.paired)
        if args.out is not None:
            check_output_path(args.out)
    runs = collect_study(study) if study is not None else collect_runs(paths)
    models = list(runs["model_id"].dropna().unique())
    if len(models) > 1:
        print(f"alphasel plot: warning: the runs are of {len(models)} models "
              f"({', '.join(map(str, models))}): each model's runs are drawn as groups of "
              "their own", file=sys.stderr)
    if name == REPORT_FIGURE:
        path = write_report(study, args.smooth, out=args.out or study / REPORT_FILE,
                            plotlyjs=args.plotlyjs or "directory", formats=formats,
                            baselines=tuple(args.baseline), effect=args.effect,
                            metric=args.metric)
    else:
        fig = study_figure(name, runs, args.smooth, args.metric, args.paired,
                           tuple(args.baseline))
        stem = name + (f"-paired-{args.paired}" if args.paired else "")
        path = save_figure(fig, args.out or _figure_out(study, stem, args.smooth, args.metric))
    print(path)
    return path


def run(args: argparse.Namespace) -> Path:
    if args.plot == COMPARE_PLOT:
        return run_compare(args)
    only_compare = {"--smooth": args.smooth, "--metric": args.metric, "--paired": args.paired,
                    "--plotlyjs": args.plotlyjs, "--format": args.format,
                    "--baseline": args.baseline or None, "--effect": args.effect}
    given = [flag for flag, value in only_compare.items() if value is not None]
    if given:
        raise PlotError(f"{given[0]} applies to `plot {COMPARE_PLOT}` only: drop it")
    if len(args.table) > 1:
        what = "run directory" if args.plot == TRAINING_PLOT else "alpha table (add --vs OTHER)"
        raise PlotError(f"`plot {args.plot}` draws one {what}, not {len(args.table)}: pass "
                        f"one, or compare runs with `alphasel plot {COMPARE_PLOT} RUN RUN...`")
    args.table = args.table[0] if args.table else None
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
