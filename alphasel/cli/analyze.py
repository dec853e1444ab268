"""`alphasel analyze MODEL [MODEL ...]`: alpha per weight matrix → table file(s) + summary.

Several models (the checkpoints of a training run) give one table each and a combined table
with a leading ``model`` column; see :func:`alphasel.table.save_analyses` for where they go.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from alphasel.analyzer import analyze
from alphasel.columns import STATUS_OK
from alphasel.downsample import MODES
from alphasel.errors import AnalysisOptionError
from alphasel.layout import KINDS
from alphasel.powerlaw import ESTIMATORS
from alphasel.spectra import DEVICES
from alphasel.table import (
    SUPPORTED_SUFFIXES,
    check_tables_directory,
    save_analyses,
    save_analysis,
    table_format,
    write_table,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze", help="alpha per weight matrix of a model",
        description="Fit a power law to the eigenvalue spectrum of every weight matrix.",
    )
    parser.add_argument("model", nargs="+",
                        help="hub id (org/name), local checkpoint dir, .safetensors, .gguf or "
                        ".bin file, or a packaged model: smollm2, minilm; several (e.g. the "
                        "checkpoints of a run) give a table each plus a combined table")
    parser.add_argument("--revision", help="hub branch, tag or commit (hub ids only)")
    parser.add_argument("--adapter", type=Path, metavar="DIR",
                        help="a PEFT LoRA/rsLoRA/DoRA adapter: its matrices read as W + ΔW")
    parser.add_argument("--estimator", default="ks",
                        help=f"xmin choice: {', '.join(ESTIMATORS)} (default ks, WeightWatcher's)")
    parser.add_argument("--include", action="append", metavar="REGEX",
                        help="analyze only matrices whose name matches (repeatable)")
    parser.add_argument("--exclude", action="append", metavar="REGEX",
                        help="skip matrices whose name matches (repeatable)")
    parser.add_argument("--min-evals", type=int, default=10,
                        help="matrices with fewer eigenvalues get a status row, no fit")
    parser.add_argument("--device", default="cpu",
                        help=f"{' or '.join(DEVICES)} (cuda:N for one GPU of several)")
    parser.add_argument("--downsample", default="none",
                        help=f"{', '.join(MODES)}: sample submatrices of one shape for fair "
                        "comparison across shapes (default none, WeightWatcher-exact)")
    parser.add_argument("--samples", type=int, default=1, help="draws per matrix when sampling")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    parser.add_argument("--workers", type=int, default=None,
                        help="matrices analysed at once, sharing the cores' BLAS threads "
                        "(default: one per core, fewer if --memory-gb admits fewer of the "
                        "largest matrices; 2 on a GPU)")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="working memory the matrices in flight may hold together "
                        "(default: half the RAM available at the start)")
    parser.add_argument("--out", type=Path, help=f"write exactly the table here "
                        f"({', '.join(SUPPORTED_SUFFIXES)}); with several models a directory "
                        "for <model>.csv each and combined.csv; default runs/analyses/")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="neither read nor store per-matrix results in the result cache "
                        "($ALPHASEL_CACHE, default ~/.cache/alphasel/alpha)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if len(args.model) > 1:
        run_many(args)
        return
    if args.out is not None:
        table_format(args.out)  # before the analysis, which may take minutes
    table = _analyze(args, args.model[0])
    path = write_table(table, args.out) if args.out else save_analysis(
        table, table.attrs["alphasel"]["model_id"])
    print(summary(table))
    print(f"table: {path}")


def run_many(args: argparse.Namespace) -> None:
    """Analyse every model, then write every table: a failure leaves no file behind, and the
    result cache keeps the finished models' fits for the next attempt."""
    repeated = sorted({model for model in args.model if args.model.count(model) > 1})
    if repeated:
        raise AnalysisOptionError(f"model '{repeated[0]}' is given more than once: name each "
                                  "model once")
    if args.adapter is not None:
        raise AnalysisOptionError("--adapter takes one base model, got "
                                  f"{len(args.model)} models: analyze the base and its adapter "
                                  "alone, or leave --adapter out to compare checkpoints")
    if args.out is not None:
        check_tables_directory(args.out)
    tables = [(model, _analyze(args, model)) for model in args.model]
    paths, combined = save_analyses(tables, args.out)
    for (_, table), path in zip(tables, paths, strict=True):
        print(summary(table))
        print(f"table: {path}\n")
    print(f"combined table ({len(tables)} models): {combined}")


def _analyze(args: argparse.Namespace, model: str) -> pd.DataFrame:
    return analyze(
        model, args.estimator, revision=args.revision, include=args.include,
        exclude=args.exclude, min_evals=args.min_evals, device=args.device,
        downsample=args.downsample, samples=args.samples, seed=args.seed,
        workers=args.workers, memory_gb=args.memory_gb, progress=not args.quiet,
        adapter=args.adapter, cache=args.cache,
    )


def _format_means(means: pd.Series) -> str:
    return "  ".join(f"{key}={value:.2f}" for key, value in means.items())


def summary(table: pd.DataFrame) -> str:
    """Mean alpha per kind and per block, the 5 highest and lowest matrices, and what failed."""
    meta = table.attrs.get("alphasel", {})
    fitted = table[table["status"] == STATUS_OK]
    cached = f", {meta['cached']} from cache" if meta.get("cached") else ""
    lines = [f"{meta.get('model_id', 'model')}: {len(table)} matrices, {len(fitted)} fitted "
             f"({meta.get('estimator', 'ks')} estimator, {meta.get('elapsed_s', 0):.1f} s"
             f"{cached})"]
    if len(fitted):
        lines.append(f"mean alpha {fitted['alpha'].mean():.3f}  median "
                     f"{fitted['alpha'].median():.3f}")
        by_kind = fitted.groupby("kind")["alpha"].mean()
        by_kind = by_kind.reindex([k for k in KINDS if k in by_kind.index])
        lines.append("per kind:  " + _format_means(by_kind))
        by_block = fitted.dropna(subset=["block"]).groupby("block")["alpha"].mean()
        if len(by_block):
            lines.append("per block: " + _format_means(by_block))
        ranked = fitted.sort_values("alpha", kind="stable")
        for title, rows in (("highest", ranked.iloc[::-1].head(5)), ("lowest", ranked.head(5))):
            lines.append(f"{title} alpha:")
            lines += [f"  {row.alpha:7.3f}  {row.name}" for row in rows.itertuples(index=False)]
    failed = table[table["status"] != STATUS_OK]
    if len(failed):
        lines.append(f"not fitted ({len(failed)}):")
        lines += [f"  {row.name}: {row.status}" for row in failed.head(10).itertuples(index=False)]
        if len(failed) > 10:
            lines.append(f"  … and {len(failed) - 10} more (see the status column)")
    return "\n".join(lines)


