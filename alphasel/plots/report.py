"""A study's report: one self-contained HTML page with its comparison table and figures.

    runs/studies/<id>/
      report.html            title (model, data), the study's settings, run counts, the
                             comparison table, failed runs with their errors, every figure
      figures/<name>.html    each figure of :data:`alphasel.plots.comparison.STUDY_FIGURES` alone

plotly.js is inlined once in report.html (and in each figure file), so every page works
offline and can be mailed or archived as one file. Everything is written to a temporary name
and renamed, so a reader never sees half a page; the report can be rewritten at any time while
a study runs (it counts the runs not finished yet).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from alphasel.atomic import write_text
from alphasel.errors import PlotError
from alphasel.plots.comparison import check_smooth, study_figures
from alphasel.plots.output import save_figure
from alphasel.provenance import utc_now
from alphasel.study.collect import collect_study
from alphasel.study.directory import (
    FIGURES_DIR,
    REPORT_FILE,
    STABILITY_FILE,
    RunState,
    spec_fields,
)
from alphasel.study.display import display_table
from alphasel.study.stability import stability_summary
from alphasel.study.stats import comparison_table

#: Settings of spec.json shown under the title, in this order (when present).
SPEC_FIELDS = ("schemes", "methods", "method", "k", "unit", "rank", "seeds", "task",
               "estimator", "sweep", "train", "created")
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { margin-bottom: 0.2em; }
.settings { color: #555; }
.settings dt { font-weight: 600; float: left; clear: left; width: 7em; }
.settings dd { margin-left: 8em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
tr.unmatched td { color: #666; font-style: italic; }
td.error { text-align: left; white-space: normal; font-family: monospace; }
.note { color: #555; max-width: 60em; }
.empty { font-size: 1.2em; padding: 1em; background: #fff4e5; border: 1px solid #f0c080; }
"""


def write_report(study_dir: str | Path, smooth: int | None = None,
                 out: str | Path | None = None) -> Path:
    """Write ``report.html`` (or ``out``) and ``figures/<name>.html`` for the study in
    ``study_dir``; return the report's path.

    ``smooth``: the loss curves' moving-average window in evaluation points (see
    :func:`alphasel.plots.comparison.loss_curves_figure`). A study where no run has completed yet
    gets a page that says so, with its table of counts, and no figure files."""
    study_dir = Path(study_dir)
    check_smooth(smooth)
    out = Path(out) if out is not None else study_dir / REPORT_FILE
    if out.suffix.lower() != ".html":
        raise PlotError(f"cannot write the study report to '{out}': the report is one HTML "
                        "page; use a file ending in .html")
    runs = collect_study(study_dir)
    spec = spec_fields(study_dir)
    table = comparison_table(runs)
    done = bool((runs["status"] == RunState.COMPLETE).any())
    figures = study_figures(runs, smooth) if done else {}
    figure_paths = {name: save_figure(fig, study_dir / FIGURES_DIR / f"{name}.html")
                    for name, fig in figures.items()}
    several_models = runs["model_id"].dropna().nunique() > 1
    page = render_report(spec, runs, table, figures,
                         {name: _relative(path, out.parent) for name, path in
                          figure_paths.items()}, several_models, study_dir.name,
                         _read_stability(study_dir / STABILITY_FILE))
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text(out, page)


def render_report(spec: dict[str, Any], runs: pd.DataFrame, table: pd.DataFrame,
                  figures: dict[str, go.Figure], links: dict[str, str] | None = None,
                  several_models: bool = False, name: str = "",
                  stability: pd.DataFrame | None = None) -> str:
    """The report page as text: ``spec`` (spec.json's fields), ``runs`` (collect_study),
    ``table`` (comparison_table of runs), ``figures`` by name; ``links``: where each figure's
    own file is, relative to the page; ``stability``: the study's stability.csv, if any."""
    links = links or {}
    title = f"Selection study: {spec.get('model') or 'unknown model'} on " \
            f"{spec.get('data') or 'unknown data'}"
    parts = [f"<h1>{_escape(title)}</h1>",
             f"<p class='settings'>{_escape(name)} · written "
             f"{utc_now()}</p>",
             _settings(spec), f"<p>{_escape(_counts(runs))}</p>"]
    if not (runs["status"] == RunState.COMPLETE).any():
        parts.append("<p class='empty'>No run has completed yet, so there is nothing to "
                     "compare or draw. Continue the study with <code>alphasel study --resume "
                     f"{_escape(name or 'STUDY_DIR')}</code>; the table below counts the runs "
                     "per scheme.</p>")
    parts += ["<h2>Comparison</h2>",
              "<p class='note'>One row per scheme and setting. Losses: mean over the complete "
              "runs (seeds) [95% t-interval]. vs_random, vs_all: the seed-paired difference in "
              "final eval loss against that baseline, mean [95% interval]; negative means "
              "better than the baseline. n: complete runs; failed; missing: not started, "
              "unfinished or killed. Rows marked (unmatched) are the upper baselines (all, "
              "full), which train more than the budget by design.</p>",
              _table_html(table, several_models), _failures_html(runs),
              _stability_html(stability)]
    if figures:
        parts.append("<h2>Figures</h2>")
        for index, (figure_name, fig) in enumerate(figures.items()):
            link = links.get(figure_name)
            parts.append(f"<h3 id='{_escape(figure_name)}'>{_escape(figure_name)}"
                         + (f" <small>(<a href='{_escape(link)}'>alone</a>)</small>"
                            if link else "") + "</h3>")
            # plotly.js once, with the first figure; the later ones use the same Plotly.
            parts.append(fig.to_html(full_html=False, include_plotlyjs=index == 0,
                                     default_height="560px"))
    body = "\n".join(part for part in parts if part)
    return (f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<title>{_escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")


def _settings(spec: dict[str, Any]) -> str:
    items = []
    for key in SPEC_FIELDS:
        value = spec.get(key)
        if value in (None, {}, []):
            continue
        shown = (", ".join(map(str, value)) if isinstance(value, list)
                 else json.dumps(value, sort_keys=True) if isinstance(value, dict)
                 else str(value))
        items.append(f"<dt>{_escape(key)}</dt><dd>{_escape(shown)}</dd>")
    return f"<dl class='settings'>{''.join(items)}</dl>" if items else ""


def _counts(runs: pd.DataFrame) -> str:
    """``12 runs: 9 complete, 1 failed, 1 incomplete, 1 missing`` (zero counts left out)."""
    statuses = runs["status"].value_counts()
    counts = [f"{int(statuses[status])} {status}" for status in
              (RunState.COMPLETE, RunState.FAILED, RunState.INCOMPLETE, RunState.MISSING)
              if statuses.get(status, 0)]
    return f"{len(runs)} runs: {', '.join(counts)}"


def _table_html(table: pd.DataFrame, several_models: bool) -> str:
    if table.empty:
        return "<p>no runs</p>"
    shown = display_table(table, several_models)
    header = "".join(f"<th>{_escape(column)}</th>" for column in shown.columns)
    rows = []
    for (_, row), matched in zip(shown.iterrows(), table["matched"], strict=True):
        cells = "".join(f"<td>{_escape(value)}</td>" for value in row)
        opening = "<tr>" if matched else "<tr class='unmatched'>"
        rows.append(f"{opening}{cells}</tr>")
    return (f"<table class='comparison'>\n<thead><tr>{header}</tr></thead>\n<tbody>\n"
            + "\n".join(rows) + "\n</tbody>\n</table>")


def _failures_html(runs: pd.DataFrame) -> str:
    """The failed runs with their one-line errors: why a group has fewer seeds."""
    failed = runs[runs["status"] == RunState.FAILED]
    if failed.empty:
        return ""
    rows = "\n".join(
        f"<tr><td>{_escape(row['label'])}</td><td>{_escape(row['seed'])}</td>"
        f"<td>{_escape(row['run_id'])}</td><td class='error'>{_escape(row['error'])}</td></tr>"
        for _, row in failed.iterrows())
    return ("<h2>Failed runs</h2>\n<table class='failures'>\n<thead><tr><th>label</th>"
            "<th>seed</th><th>run</th><th>error</th></tr></thead>\n<tbody>\n"
            f"{rows}\n</tbody>\n</table>")


def _read_stability(path: Path) -> pd.DataFrame | None:
    """stability.csv; absent (a study of no alpha-based scheme) or unreadable: no section."""
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def _stability_html(stability: pd.DataFrame | None) -> str:
    """Mean and lowest Jaccard overlap of each alpha-based (and spectrum) selection with itself
    under another estimator and across downsampling draws, and with the other signal's."""
    if stability is None or stability.empty:
        return ""
    summary = stability_summary(stability)
    rows = "\n".join(
        f"<tr><td>{_escape(row['label'])}</td><td>{_escape(row.get('method', '-'))}</td>"
        f"<td>{_escape(row['k'])}</td>"
        f"<td>{_escape(row['comparison'])}</td><td>{int(row['pairs'])}</td>"
        f"<td>{row['mean_jaccard']:.2f}</td><td>{row['min_jaccard']:.2f}</td></tr>"
        for _, row in summary.iterrows())
    return ("<h2>Selection stability</h2>\n<p class='note'>Jaccard overlap |A ∩ B| / |A ∪ B| "
            "of each alpha-based selection (at its planned k) with the same scheme on the "
            "median and peak estimators' alphas (estimator), between downsampled analyses "
            "with different random draws (downsampling), and with the same scheme ranked by "
            "the other signal, alpha against SNR (metric; spectrum: against ALoRA by alpha "
            "with as many matrices). 1: the same modules.</p>\n"
            "<table class='stability'>\n<thead><tr><th>label</th><th>method</th><th>k</th>"
            "<th>comparison"
            "</th><th>pairs</th><th>mean Jaccard</th><th>min Jaccard</th></tr></thead>\n"
            f"<tbody>\n{rows}\n</tbody>\n</table>")


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _escape(value: object) -> str:
    return html.escape("" if value is None or value is pd.NA else str(value), quote=True)
