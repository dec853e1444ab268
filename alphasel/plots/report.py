"""A study's report: one HTML page that leads with the answer, then the table and figures.

    runs/studies/<id>/
      report.html            title (model, data), the study's settings, run counts; the forest
                             plot of the paired differences and the verdict lines; the
                             comparison table; failed runs with their errors; selection
                             stability; the other figures
      plotly.min.js          the one copy of plotly.js the pages load (--plotlyjs directory)
      figures/<name>.html    each figure of :data:`alphasel.plots.comparison.STUDY_FIGURES` alone
      figures/<name>.png     with --format png (svg, pdf), through kaleido

By default every page loads one shared plotly.min.js beside the report (a study directory stays
a few MB, and works offline as long as the file travels with it); ``inline`` gives each page its
own copy, so the report is one self-contained file to mail or archive. Everything is written to
a temporary name and renamed, so a reader never sees half a page; the report can be rewritten at
any time while a study runs (it counts the runs not finished yet).
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
from alphasel.plots.output import (
    PLOTLYJS_FILE,
    STATIC_FORMATS,
    check_plotlyjs,
    check_static_export,
    save_figure,
    write_plotlyjs,
)
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
from alphasel.study.stats import comparison_table, verdicts
from alphasel.training.task_metrics import higher_is_better

#: Settings of spec.json shown under the title, in this order (when present).
SPEC_FIELDS = ("schemes", "methods", "method", "k", "unit", "rank", "seeds", "task",
               "estimator", "sweep", "train", "created")
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1400px;
       box-sizing: border-box; color: #222; }
h1 { margin-bottom: 0.2em; }
.settings { color: #555; }
.settings dt { font-weight: 600; float: left; clear: left; width: 7em; }
.settings dd { margin-left: 8em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
.scroll { max-width: 100%; overflow-x: auto; border: 1px solid #ddd; }
.scroll table { margin: 0; }
ul.verdicts li { margin: 0.2em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
tr.unmatched td { color: #666; font-style: italic; }
td.error { text-align: left; white-space: normal; font-family: monospace; }
.note { color: #555; max-width: 60em; }
.empty { font-size: 1.2em; padding: 1em; background: #fff4e5; border: 1px solid #f0c080; }
"""


def write_report(study_dir: str | Path, smooth: int | None = None,
                 out: str | Path | None = None, *, plotlyjs: str = "directory",
                 formats: tuple[str, ...] = (), baselines: tuple[str, ...] = (),
                 effect: float | None = None, metric: str | None = None) -> Path:
    """Write ``report.html`` (or ``out``) and ``figures/<name>.html`` for the study in
    ``study_dir``; return the report's path.

    ``smooth``: the loss curves' moving-average window in evaluation points (see
    :func:`alphasel.plots.comparison.loss_curves_figure`). ``plotlyjs``: ``directory`` (one
    shared plotly.min.js beside the report, which every page loads), ``inline`` (each page
    carries its own copy and works alone) or ``cdn``. ``formats``: also write each figure as
    ``figures/<name>.<format>`` (png, svg, pdf; kaleido and a browser it finds). ``baselines``
    ``effect`` and ``metric`` (default: the runs' headline): the comparison table's
    (:func:`alphasel.study.stats.comparison_table`). A
    study where no run has completed yet gets a page that says so, with its table of counts,
    and no figure files."""
    study_dir = Path(study_dir)
    check_smooth(smooth)
    check_plotlyjs(plotlyjs)
    check_formats(formats)
    out = Path(out) if out is not None else study_dir / REPORT_FILE
    if out.suffix.lower() != ".html":
        raise PlotError(f"cannot write the study report to '{out}': the report is one HTML "
                        "page; use a file ending in .html")
    runs = collect_study(study_dir)
    table = comparison_table(runs, metric, baselines, effect)
    done = bool((runs["status"] == RunState.COMPLETE).any())
    figures = study_figures(runs, smooth, table) if done else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    # The study's own copy for its figure pages (the study stays whole wherever the report
    # goes), and one beside a report written elsewhere.
    shared = write_plotlyjs(study_dir) if plotlyjs == "directory" and figures else None
    if shared is not None and out.parent.resolve() != study_dir.resolve():
        write_plotlyjs(out.parent)
    folder = study_dir / FIGURES_DIR
    figure_paths = {}
    for name, fig in figures.items():
        page = folder / f"{name}.html"
        source = True if plotlyjs == "inline" else "cdn" if plotlyjs == "cdn" else _relative(
            shared, folder)
        figure_paths[name] = save_figure(fig, page, plotlyjs=source)
        for extension in formats:
            save_figure(fig, folder / f"{name}.{extension}")
    page = render_report(
        spec_fields(study_dir), runs, table, figures,
        {name: _relative(path, out.parent) for name, path in figure_paths.items()},
        runs["model_id"].dropna().nunique() > 1, study_dir.name,
        _read_stability(study_dir / STABILITY_FILE),
        plotlyjs=PLOTLYJS_FILE if shared is not None else plotlyjs)
    return write_text(out, page)


def parse_formats(text: str | None) -> tuple[str, ...]:
    """--format's comma list as the formats to write, checked (:func:`check_formats`)."""
    formats = tuple(item.strip() for item in (text or "").split(",") if item.strip())
    check_formats(formats)
    return formats


def check_formats(formats: tuple[str, ...]) -> None:
    """Refuse an unknown static format, or any where static images cannot be written here."""
    unknown = [item for item in formats if item not in STATIC_FORMATS]
    if unknown:
        raise PlotError(f"--format {','.join(unknown)}: use one or more of "
                        f"{', '.join(STATIC_FORMATS)}")
    if formats:
        check_static_export(f"--format {','.join(formats)}")


def render_report(spec: dict[str, Any], runs: pd.DataFrame, table: pd.DataFrame,
                  figures: dict[str, go.Figure], links: dict[str, str] | None = None,
                  several_models: bool = False, name: str = "",
                  stability: pd.DataFrame | None = None, plotlyjs: str = "inline") -> str:
    """The report page as text: ``spec`` (spec.json's fields), ``runs`` (collect_study),
    ``table`` (comparison_table of runs), ``figures`` by name; ``links``: where each figure's
    own file is, relative to the page; ``stability``: the study's stability.csv, if any;
    ``plotlyjs``: ``inline`` (with the first figure), ``cdn``, or the path of a shared
    plotly.min.js relative to the page.

    The answer comes first: the forest plot of the paired differences against each baseline
    and the verdict lines, then the table, the failed runs, selection stability and the other
    figures."""
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
    shown = [(figure_name, fig) for figure_name, fig in figures.items()]
    answer = [item for item in shown if item[0] == "forest"]
    parts += ["<h2>The answer</h2>", *(_figure_html(*item, links, index, plotlyjs)
                                       for index, item in enumerate(answer)),
              _verdicts_html(table)]
    metric = table.attrs.get("metric", "eval_loss")
    direction = "higher" if higher_is_better(metric) else "lower"
    parts += ["<h2>Comparison</h2>",
              "<p class='note'>One row per scheme and setting. Losses and metrics: mean over "
              "the complete runs (seeds) [95% t-interval]. vs_random, vs_all (and any other "
              f"baseline): the seed-paired difference in the final {_escape(metric)} against "
              "that baseline, mean [95% interval]: "
              f"{'positive' if direction == 'higher' else 'negative'} means a {direction} "
              f"{_escape(metric)} than the baseline, which is better; p: its paired t-test's "
              "Holm-adjusted p-value across every comparison of the table. n: complete runs; "
              "failed; missing: not started, unfinished or killed. Rows marked (unmatched) are "
              "the upper baselines (all, full), which train more than the budget by "
              "design.</p>",
              _table_html(table, several_models), _failures_html(runs),
              _stability_html(stability)]
    others = [item for item in shown if item[0] != "forest"]
    if others:
        parts.append("<h2>Figures</h2>")
        parts += [_figure_html(*item, links, len(answer) + index, plotlyjs)
                  for index, item in enumerate(others)]
    body = "\n".join(part for part in parts if part)
    script = (f"<script src='{_escape(plotlyjs)}' charset='utf-8'></script>\n"
              if plotlyjs not in ("inline", "cdn") else "")
    return (f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<title>{_escape(title)}</title>\n<style>{_STYLE}</style>\n{script}</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def _figure_html(name: str, fig: go.Figure, links: dict[str, str], index: int,
                 plotlyjs: str) -> str:
    """A figure's heading (with a link to its own page) and the figure; inline plotly.js goes
    with the first figure of the page only, the later ones use the same Plotly."""
    link = links.get(name)
    include: bool | str = {"inline": index == 0, "cdn": "cdn" if index == 0 else False}.get(
        plotlyjs, False)
    return (f"<h3 id='{_escape(name)}'>{_escape(name)}"
            + (f" <small>(<a href='{_escape(link)}'>alone</a>)</small>" if link else "")
            + "</h3>\n" + fig.to_html(full_html=False, include_plotlyjs=include,
                                      default_height="560px"))


def _verdicts_html(table: pd.DataFrame) -> str:
    """The verdict lines (:func:`alphasel.study.stats.verdicts`) as a list, or a note that
    nothing could be compared."""
    lines = verdicts(table)
    if not lines:
        return ("<p class='note'>No label shares two or more seeds with a baseline yet: "
                "nothing is compared.</p>")
    comparisons = table.attrs.get("comparisons", 0)
    metric = table.attrs.get("metric", "eval_loss")
    return (f"<p class='note'>Paired t-tests of the final {_escape(metric)} "
            f"({'higher' if higher_is_better(metric) else 'lower'} is better) at the "
            f"Holm-corrected 5% level over the "
            f"{comparisons} comparisons of the table; \"could detect\": the smallest "
            "difference found with 80% power at that level from the seeds run and the spread "
            "of their differences.</p>\n<ul class='verdicts'>\n"
            + "\n".join(f"<li>{_escape(line)}</li>" for line in lines) + "\n</ul>")


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
    return (f"<div class='scroll'><table class='comparison'>\n<thead><tr>{header}</tr></thead>"
            "\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table></div>")


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
