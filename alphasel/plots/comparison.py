"""Figures of a study (plotly): loss curves, final loss, cost and alpha shift across seeds.

Every figure takes the runs table of :mod:`alphasel.study.collect` (``collect_study`` or
``collect_runs``) and draws one *group* per label and cell, the groups of
:func:`alphasel.study.stats.grouping_columns` (model, label, budget or k, rank, sweep values),
so runs are only ever averaged over their training seeds. Only complete runs are drawn; failed,
unfinished and missing ones are left out (the comparison table counts them). Intervals are the
95% Student-t intervals of :func:`alphasel.study.stats.t_interval`, as in the table.

    runs = collect_study("runs/studies/<id>")
    save_figure(final_loss_figure(runs), "final_loss.html")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from alphasel.errors import PlotError
from alphasel.study.collect import SWEEP_PREFIX, metric_columns
from alphasel.study.directory import RunState
from alphasel.study.significance import LEVEL
from alphasel.study.stats import (
    baseline_runs,
    baselines_of,
    compared_metric,
    comparison_table,
    describe_row,
    grouping_columns,
    t_interval,
)
from alphasel.training.record import COMPONENTS, RunRecord
from alphasel.training.task_metrics import LOSSES

#: Figures of a study, in the order the report shows them (also `alphasel plot compare
#: --figure NAME`).
STUDY_FIGURES = ("forest", "loss_curves", "final_loss", "cost", "memory", "alpha_shift")
#: Metrics a loss curve can follow: metrics.jsonl's per-evaluation and per-step losses.
CURVE_METRICS = ("eval_loss", "loss")
#: Per-run results a final-value figure can show: summary.json's final and best eval loss, and
#: any other final metric the runs have (:func:`alphasel.study.collect.metric_columns`).
FINAL_METRICS = LOSSES
#: A drawn curve keeps at most this many points (the mean and band are computed at every step
#: first): thousands of logged steps per group would make the report page megabytes heavier
#: without showing more.
MAX_CURVE_POINTS = 500
_PALETTE = plotly.colors.qualitative.Plotly
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_TITLES = {"eval_loss": "final eval loss", "best_eval_loss": "best eval loss"}


@dataclass
class Group:
    """The runs of one label in one cell, with how every figure names and draws them."""

    name: str
    label: str
    matched: bool
    runs: pd.DataFrame
    colour: str
    dash: str

    @property
    def complete(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == RunState.COMPLETE]


def study_groups(runs: pd.DataFrame) -> list[Group]:
    """The groups of ``runs`` in the order the table first lists them (a study's matrix order).

    A group's name is its label, then the cell values that differ between groups (a value
    shared by every run says nothing), then ``(unmatched)`` for the upper baselines that train
    more than the budget. One colour per label, one dash per cell of a label, so a scheme keeps
    its colour in every figure."""
    _check_columns(runs)
    by = grouping_columns(runs)
    cell = [column for column in by if column != "label"]
    shown = [column for column in cell if runs[column].dropna().nunique() > 1]
    colours: dict[str, str] = {}
    cells_of: dict[str, int] = {}
    groups = []
    if runs.empty:
        return groups
    for _, rows in runs.groupby(by, dropna=False, sort=False):
        first = rows.iloc[0]
        label = str(first["label"])
        matched = bool(rows["matched"].all()) if "matched" in rows else True
        parts = [label] + [f"{_short(column)}={_text(first[column])}" for column in shown
                           if not _missing(first[column])]
        name = " · ".join(parts) + ("" if matched else " (unmatched)")
        colour = colours.setdefault(label, _PALETTE[len(colours) % len(_PALETTE)])
        index = cells_of[label] = cells_of.get(label, -1) + 1
        groups.append(Group(name, label, matched, rows, colour, _DASHES[index % len(_DASHES)]))
    return groups


# ---- the answer: paired differences against each baseline ----------------------------------------

def forest_figure(table: pd.DataFrame) -> go.Figure:
    """The comparisons of a :func:`alphasel.study.stats.comparison_table`, one panel per baseline
    and one row per group compared with it: the mean paired difference (label − baseline, over
    the seeds both ran) with its 95% t-interval, a zero line, and a filled marker where the
    difference is significant at the Holm-corrected 5% level (open: no difference detected)."""
    metric = table.attrs.get("metric", "eval_loss")
    title = (f"paired difference in {metric} against each baseline (mean, 95% interval; filled: "
             f"Holm-corrected p < {LEVEL:g})")
    compared = [baseline for baseline in table.attrs.get("baselines", ())
                if f"vs_{baseline}_pairs" in table
                and (table[f"vs_{baseline}_pairs"].fillna(0) > 0).any()]
    if not compared:
        return _empty_figure(title, "no label shares seeds with a baseline")
    fig = make_subplots(rows=1, cols=len(compared), shared_yaxes=False, horizontal_spacing=0.2,
                        subplot_titles=[f"− {baseline}" for baseline in compared])
    for col, baseline in enumerate(compared, start=1):
        rows = table[table[f"vs_{baseline}_pairs"].fillna(0) > 0]
        for index, row in rows.iloc[::-1].iterrows():  # the table's first row on top
            mean, low, high = (float(row[f"vs_{baseline}_{part}"])
                               for part in ("mean", "ci_low", "ci_high"))
            adjusted = float(row[f"vs_{baseline}_p_holm"])
            significant = math.isfinite(adjusted) and adjusted < LEVEL
            name = describe_row(table, index)
            fig.add_trace(go.Scatter(
                x=[mean], y=[name], mode="markers", name=name, showlegend=False,
                error_x=dict(type="data", array=[high - mean if math.isfinite(high) else 0.0],
                             arrayminus=[mean - low if math.isfinite(low) else 0.0],
                             visible=math.isfinite(low), color="#444", thickness=2, width=6),
                marker=dict(size=11, color="#444",
                            symbol="diamond" if significant else "diamond-open"),
                meta={"group": name, "baseline": baseline, "significant": significant},
                hovertemplate=f"{name} − {baseline}<br>%{{x:.4f}} [{low:.4f}, {high:.4f}]"
                              f"<br>Holm p = {_text(adjusted, '.3g')}, "
                              f"{int(row[f'vs_{baseline}_pairs'])} seeds<extra></extra>"),
                row=1, col=col)
        fig.add_vline(x=0.0, line_color="grey", line_width=1, row=1, col=col)
        fig.update_xaxes(title_text=f"{metric} − {baseline}", row=1, col=col)
    fig.update_layout(title=title, hovermode="closest",
                      height=max(360, 90 + 34 * len(table)))
    return fig


# ---- loss curves -------------------------------------------------------------------------------

def run_curve(path: str | Path, metric: str = "eval_loss", smooth: int | None = None
              ) -> pd.Series:
    """One run's ``metric`` by step from its metrics.jsonl (:meth:`RunRecord.metrics`; float64,
    steps ascending).

    A step logged twice keeps its last value (what a resumed run wrote last); null values (a
    diverged loss) are left out. ``smooth``: a centred moving average over that many logged
    points, each end averaging the points it has; centred so that a smoothed curve does not
    lag behind its run and shift one scheme's progress against another's."""
    metrics = RunRecord.load(path).metrics()
    if metrics.empty or not {"step", metric} <= set(metrics.columns):
        return pd.Series(dtype="float64", name=metric)
    frame = metrics[["step", metric]].copy()
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce")
    frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    frame = frame.dropna().drop_duplicates("step", keep="last").sort_values("step")
    curve = pd.Series(frame[metric].to_numpy(dtype="float64"),
                      index=frame["step"].astype("int64").to_numpy(), name=metric)
    if smooth is not None and smooth > 1:
        curve = curve.rolling(window=smooth, min_periods=1, center=True).mean()
    return curve


def curve_band(curves: list[pd.Series]) -> pd.DataFrame:
    """Per step (the union of the curves' steps): ``n`` (curves with a value there), ``mean``,
    and ``ci_low``/``ci_high``, the 95% t-interval of the mean over the curves (NaN where fewer
    than two have a value: one seed has no spread to show)."""
    if not curves:
        return pd.DataFrame(columns=["step", "n", "mean", "ci_low", "ci_high"])
    table = pd.concat(curves, axis=1).sort_index()
    rows = []
    for step, values in table.iterrows():
        mean, _, low, high = t_interval(values.to_numpy())
        rows.append({"step": int(step), "n": int(values.notna().sum()), "mean": mean,
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def loss_curves_figure(runs: pd.DataFrame, metric: str = "eval_loss",
                       smooth: int | None = None, paired: str | None = None) -> go.Figure:
    """Per group, the mean ``metric`` curve over the steps across its complete runs (a line),
    and its 95% t-band (shaded; only at steps where at least two runs have a value).

    ``metric``: ``eval_loss`` (per evaluation) or ``loss`` (training loss, per logged step).
    ``smooth``: each run's curve is smoothed first (see :func:`run_curve`), so the band is the
    spread of the smoothed curves over seeds. ``paired`` (a baseline label, e.g. ``random``):
    each run's curve minus its seed's baseline run's (same cell, the steps both logged), so the
    band is that of the paired differences, the seed's own luck taken out. Curves longer than
    :data:`MAX_CURVE_POINTS` points are drawn at every n-th step (the first and last are always
    kept)."""
    if metric not in CURVE_METRICS:
        raise PlotError(f"unknown curve metric '{metric}': choose one of "
                        f"{', '.join(CURVE_METRICS)} (--metric)")
    check_smooth(smooth)
    what = {"eval_loss": "eval loss", "loss": "training loss"}[metric]
    if paired is not None:
        baselines_of(runs, [paired])  # a label the runs have
        what += f" − {paired}'s at the same seed"
    title = what + {"eval_loss": " during training", "loss": " by step"}[metric] + (
        f" (moving average over {smooth} points)" if smooth and smooth > 1 else "")
    fig = go.Figure()
    for group in study_groups(runs):
        if paired is not None and group.label == paired:
            continue
        curves = _group_curves(runs, group, metric, smooth, paired)
        band = _thinned(curve_band([curve for curve in curves if len(curve)]))
        if band.empty:
            continue
        spread = band.dropna(subset=["ci_low", "ci_high"])
        fill = _rgba(group.colour, 0.2)
        # The low edge first: the high edge fills down to it ("tonexty" fills to the trace
        # before). Both share the mean's legend group, so one click hides the band too.
        for part in ("ci_low", "ci_high"):
            fig.add_trace(go.Scatter(
                x=spread["step"].to_numpy(), y=spread[part].to_numpy(), mode="lines",
                line=dict(width=0, color=fill), fill="tonexty" if part == "ci_high" else None,
                fillcolor=fill, legendgroup=group.name, showlegend=False, hoverinfo="skip",
                name=f"{group.name} 95% CI", meta={"group": group.name, "part": part}))
        fig.add_trace(go.Scatter(
            x=band["step"].to_numpy(), y=band["mean"].to_numpy(), mode="lines",
            name=group.name, legendgroup=group.name,
            line=dict(color=group.colour, dash=group.dash, width=2),
            meta={"group": group.name, "part": "mean"},
            customdata=np.stack([band["n"].to_numpy(dtype="float64"),
                                 band["ci_low"].to_numpy(), band["ci_high"].to_numpy()],
                                axis=-1),
            hovertemplate=f"{group.name}<br>step %{{x}}<br>{metric}=%{{y:.4f}} "
                          "[%{customdata[1]:.4f}, %{customdata[2]:.4f}]<br>"
                          "runs: %{customdata[0]}<extra></extra>"))
    if not fig.data:
        return _empty_figure(title, f"no complete run logged {metric}"
                             + (f" beside a run of {paired}" if paired else ""))
    if paired is not None:
        fig.add_hline(y=0.0, line_color="grey", line_width=1)
    fig.update_layout(title=title, xaxis_title="step",
                      yaxis_title=metric if paired is None else f"{metric} − {paired}",
                      hovermode="closest", legend_title="mean over seeds, 95% band")
    return fig


def _group_curves(runs: pd.DataFrame, group: Group, metric: str, smooth: int | None,
                  paired: str | None) -> list[pd.Series]:
    """The group's runs' curves, or with ``paired`` each minus its seed's baseline curve."""
    done = group.complete
    if paired is None:
        return [run_curve(path, metric, smooth) for path in done["path"]]
    partners = baseline_runs(runs, done, paired)
    # Several baseline runs of one seed are averaged, as the paired differences average them.
    reference = {seed: pd.concat([run_curve(path, metric, smooth) for path in rows["path"]],
                                 axis=1).mean(axis=1)
                 for seed, rows in partners.groupby("seed")}
    return [(run_curve(path, metric, smooth) - reference[seed]).dropna()
            for seed, path in zip(done["seed"], done["path"], strict=True) if seed in reference]


def check_smooth(smooth: int | None) -> int | None:
    """Raise :class:`PlotError` unless ``smooth`` is None or a whole number of points ≥ 1."""
    if smooth is not None and (isinstance(smooth, bool) or not isinstance(smooth, int | np.integer)
                               or smooth < 1):
        raise PlotError(f"--smooth {smooth}: give a moving-average window of 1 or more "
                        "logged points (1: no smoothing)")
    return smooth


def _thinned(band: pd.DataFrame) -> pd.DataFrame:
    if len(band) <= MAX_CURVE_POINTS:
        return band
    stride = math.ceil(len(band) / MAX_CURVE_POINTS)
    keep = np.zeros(len(band), dtype=bool)
    keep[::stride] = True
    keep[-1] = True
    return band[keep].reset_index(drop=True)


# ---- per-run values: final loss, alpha shift ---------------------------------------------------

def final_loss_figure(runs: pd.DataFrame, metric: str = "eval_loss") -> go.Figure:
    """Per group, each complete run's ``metric`` (summary.json's) as a point, and their mean
    with its 95% t-interval as an error bar. Every group gets its place, with ``n=<complete> of
    <runs>`` under its name, so a group whose runs all failed is visible as empty."""
    known = [*FINAL_METRICS, *metric_columns(runs)]
    if metric not in known:
        raise PlotError(f"unknown final metric '{metric}': choose one of {', '.join(known)} "
                        "(--metric)")
    title = _TITLES.get(metric, f"final {metric.removeprefix('eval_').replace('_', ' ')}")
    return _seed_values_figure(runs, metric, f"{title} per run (mean, 95% interval)",
                               metric, keep_empty=True)


def alpha_shift_figure(runs: pd.DataFrame) -> go.Figure:
    """Per group, each complete run's alpha shift (mean over the adapted modules of alpha at
    the last measurement − alpha before training) as a point, with the mean and its 95%
    t-interval. Groups without an alpha history (no --remeasure) are left out."""
    fig = _seed_values_figure(runs, "alpha_shift",
                              "alpha shift of the adapted modules (last − before training)",
                              "Δ alpha", keep_empty=False)
    if fig.data:
        fig.add_hline(y=0.0, line_color="grey", line_width=1)
    return fig


def _seed_values_figure(runs: pd.DataFrame, column: str, title: str, axis_title: str,
                        keep_empty: bool) -> go.Figure:
    fig = go.Figure()
    ticks: list[tuple[int, str]] = []
    for group in study_groups(runs):
        done = group.complete
        values = done[column].to_numpy(dtype="float64") if column in done else np.array([])
        finite = np.isfinite(values)
        if not finite.any() and not keep_empty:
            continue
        position = len(ticks)
        ticks.append((position, f"{group.name}<br>n={int(finite.sum())} of {len(group.runs)}"))
        if not finite.any():
            continue
        done, values = done[finite], values[finite]
        # Seeds spread left of the group's place, the mean right of it: equal values stay
        # visible as separate points.
        offsets = (np.linspace(-0.25, -0.05, len(values)) if len(values) > 1
                   else np.array([-0.15]))
        fig.add_trace(go.Scatter(
            x=position + offsets, y=values, mode="markers", name=group.name,
            legendgroup=group.name, showlegend=False,
            marker=dict(color=group.colour, size=8, opacity=0.7,
                        symbol="circle" if group.matched else "circle-open"),
            meta={"group": group.name, "part": "runs"},
            customdata=np.array([[_text(seed), run_id] for seed, run_id
                                 in zip(done["seed"], done["run_id"].astype(str), strict=True)],
                                dtype=object),
            hovertemplate=f"{group.name}<br>seed %{{customdata[0]}}: %{{y:.4f}}<br>"
                          "%{customdata[1]}<extra></extra>"))
        mean, _, low, high = t_interval(values)
        fig.add_trace(go.Scatter(
            x=[position + 0.12], y=[mean], mode="markers", name=f"{group.name} mean",
            legendgroup=group.name, showlegend=False,
            marker=dict(color=group.colour, size=12, symbol="diamond"),
            error_y=_error_bar(mean, low, high, group.colour),
            meta={"group": group.name, "part": "mean", "ci_low": _finite(low),
                  "ci_high": _finite(high)},
            hovertemplate=f"{group.name}<br>mean %{{y:.4f}}"
                          + (f" [{low:.4f}, {high:.4f}]" if math.isfinite(low) else "")
                          + f" over {len(values)} run(s)<extra></extra>"))
    if not fig.data:
        return _empty_figure(title, f"no complete run has {column}")
    fig.update_layout(title=title, yaxis_title=axis_title, hovermode="closest",
                      xaxis=dict(tickmode="array", tickvals=[tick for tick, _ in ticks],
                                 ticktext=[text for _, text in ticks],
                                 range=[-0.6, len(ticks) - 0.4]))
    return fig


# ---- cost --------------------------------------------------------------------------------------

def cost_figure(runs: pd.DataFrame) -> go.Figure:
    """Peak memory (MB) and wall time (s) against the number of adapted modules: two panels,
    one marker per group at its mean with the 95% t-interval over its complete runs (hover:
    blocks and trainable parameters too).

    Full fine-tuning adapts no modules (every weight trains, adapted_modules is NaN): it is a
    horizontal reference line across each panel at its mean, named in the legend, rather than
    a point at an invented module count (the runs table does not know the model's size)."""
    title = "cost against adapted modules (mean, 95% interval over seeds)"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("peak memory (MB)", "wall time (s)"),
                        horizontal_spacing=0.1)
    adapters, references = [], []
    for group in study_groups(runs):
        done = group.complete
        if done.empty:
            continue
        modules = done["adapted_modules"].dropna()
        (adapters if len(modules) else references).append(group)
    xs = [float(group.complete["adapted_modules"].mean()) for group in adapters]
    span = [min(xs), max(xs)] if xs else [0.0, 1.0]
    if span[0] == span[1]:
        span = [span[0] - 0.5, span[1] + 0.5]
    for col, column, unit in ((1, "peak_memory_mb", "MB"), (2, "wall_s", "s")):
        for group, x in zip(adapters, xs, strict=True):
            done = group.complete
            mean, _, low, high = t_interval(done[column])
            if not math.isfinite(mean):
                continue
            blocks = done["adapted_blocks"].mean()
            trainable = done["trainable_params"].mean()
            fig.add_trace(go.Scatter(
                x=[x], y=[mean], mode="markers", name=group.name, legendgroup=group.name,
                showlegend=col == 1,
                marker=dict(color=group.colour, size=11,
                            symbol="circle" if group.matched else "circle-open"),
                error_y=_error_bar(mean, low, high, group.colour),
                meta={"group": group.name, "part": column, "ci_low": _finite(low),
                      "ci_high": _finite(high)},
                hovertemplate=f"{group.name}<br>%{{x:g}} modules in {_text(blocks)} blocks, "
                              f"{_text(trainable, ',.0f')} trainable<br>"
                              f"{column}=%{{y:.1f}} {unit} over {len(done)} run(s)"
                              "<extra></extra>"), row=1, col=col)
        for group in references:
            mean = t_interval(group.complete[column])[0]
            if not math.isfinite(mean):
                continue
            fig.add_trace(go.Scatter(
                x=span, y=[mean, mean], mode="lines",
                name=f"{group.name}: every weight trains", legendgroup=group.name,
                showlegend=col == 1, line=dict(color=group.colour, dash="dash", width=2),
                meta={"group": group.name, "part": column},
                hovertemplate=f"{group.name} (no adapters)<br>{column}=%{{y:.1f}} {unit} "
                              f"over {len(group.complete)} run(s)<extra></extra>"),
                row=1, col=col)
    if not fig.data:
        return _empty_figure(title, "no complete run recorded its memory or time")
    fig.update_layout(title=title, hovermode="closest")
    fig.update_xaxes(title_text="adapted modules")
    fig.update_yaxes(title_text="peak memory (MB)", row=1, col=1)
    fig.update_yaxes(title_text="wall time (s)", row=1, col=2)
    return fig


def memory_figure(runs: pd.DataFrame) -> go.Figure:
    """Memory by component per group (scheme × method × cell): the mean over its complete runs
    of each component of summary.json's memory_breakdown stacked as a bar (frozen and trained
    weights, gradients, optimizer state, activations, inputs), and the measured peak beside it
    as a marker with its 95% interval. The components do not sum to the peak: it also holds the
    allocator's cache, backward temporaries and the framework."""
    title = "memory by component (mean over seeds) and the measured peak"
    groups = [group for group in study_groups(runs) if not group.complete.empty
              and group.complete[list(COMPONENTS)].notna().any().any()]
    if not groups:
        return _empty_figure(title, "no complete run recorded its memory by component")
    names = [group.name for group in groups]
    fig = go.Figure()
    for index, component in enumerate(COMPONENTS):
        means = [float(group.complete[component].mean()) for group in groups]
        fig.add_trace(go.Bar(
            x=names, y=means, name=component.removesuffix("_mb").replace("_", " "),
            marker_color=_PALETTE[index % len(_PALETTE)], meta={"part": component},
            hovertemplate="%{x}<br>" + component + "=%{y:.1f} MB<extra></extra>"))
    for index, (group, name) in enumerate(zip(groups, names, strict=True)):
        mean, _, low, high = t_interval(group.complete["peak_memory_mb"])
        fig.add_trace(go.Scatter(
            x=[name], y=[mean], mode="markers", name="measured peak", legendgroup="peak",
            showlegend=index == 0, marker=dict(symbol="diamond", size=12, color="black"),
            error_y=_error_bar(mean, low, high, "black"),
            meta={"group": group.name, "part": "peak", "ci_low": _finite(low),
                  "ci_high": _finite(high)},
            hovertemplate="%{x}<br>peak %{y:.0f} MB<extra></extra>"))
    fig.update_layout(title=title, barmode="stack", yaxis_title="MB", hovermode="closest",
                      legend=dict(traceorder="normal"))
    return fig


# ---- all of them -------------------------------------------------------------------------------

def study_figures(runs: pd.DataFrame, smooth: int | None = None,
                  table: pd.DataFrame | None = None) -> dict[str, go.Figure]:
    """Every study figure by name (:data:`STUDY_FIGURES`, in that order); ``table``: the runs'
    comparison table when it is already made (the forest plot draws it)."""
    check_smooth(smooth)
    table = comparison_table(runs) if table is None else table
    return {"forest": forest_figure(table),
            "loss_curves": loss_curves_figure(runs, smooth=smooth),
            "final_loss": final_loss_figure(runs, table.attrs.get("metric", "eval_loss")),
            "cost": cost_figure(runs),
            "memory": memory_figure(runs), "alpha_shift": alpha_shift_figure(runs)}


def check_figure_options(name: str, smooth: int | None = None, metric: str | None = None,
                         paired: str | None = None) -> None:
    """Raise :class:`PlotError` unless figure ``name`` can be drawn with these options: a
    known figure, ``smooth`` (loss_curves only, beyond 1), ``metric`` (loss_curves: one of
    :data:`CURVE_METRICS`; final_loss and forest: any final metric, checked against the runs
    when they are read) and ``paired`` (loss_curves only). Checked before any run is read, so
    a typo costs nothing."""
    if name not in STUDY_FIGURES:
        raise PlotError(f"unknown study figure '{name}': choose one of "
                        f"{', '.join(STUDY_FIGURES)} (--figure)")
    check_smooth(smooth)
    if smooth is not None and smooth > 1 and name != "loss_curves":
        raise PlotError(f"--smooth applies to loss_curves, not to {name}: drop --smooth")
    if paired is not None and name != "loss_curves":
        raise PlotError(f"--paired draws loss_curves as differences from a baseline, not "
                        f"{name}: drop --paired, or use --figure loss_curves")
    if metric is not None and name not in ("loss_curves", "final_loss", "forest"):
        raise PlotError(f"--metric applies to forest, loss_curves and final_loss, not to "
                        f"{name}: drop --metric")
    if metric is not None and name == "loss_curves" and metric not in CURVE_METRICS:
        raise PlotError(f"unknown metric '{metric}' for {name}: choose one of "
                        f"{', '.join(CURVE_METRICS)} (--metric)")


def study_figure(name: str, runs: pd.DataFrame, smooth: int | None = None,
                 metric: str | None = None, paired: str | None = None,
                 baselines: tuple[str, ...] = ()) -> go.Figure:
    """Draw study figure ``name`` (see :func:`check_figure_options` for the options; metric
    defaults to eval_loss; ``baselines``: the forest plot's own besides random and all)."""
    check_figure_options(name, smooth, metric, paired)
    if name == "forest":
        return forest_figure(comparison_table(runs, metric, baselines))
    if name == "loss_curves":
        return loss_curves_figure(runs, metric or "eval_loss", smooth, paired)
    if name == "final_loss":
        return final_loss_figure(runs, metric or compared_metric(runs))
    return {"cost": cost_figure, "memory": memory_figure,
            "alpha_shift": alpha_shift_figure}[name](runs)


# ---- helpers -----------------------------------------------------------------------------------

def _check_columns(runs: pd.DataFrame) -> None:
    needed = ["label", "status", "path", "seed", "run_id", "matched"]
    missing = [column for column in needed if column not in runs]
    if missing:
        raise PlotError(f"the runs table lacks column(s) {', '.join(missing)}: build it with "
                        "alphasel.study.collect (collect_study or collect_runs)")


def _empty_figure(title: str, message: str) -> go.Figure:
    """A figure that says why it is empty, instead of blank axes."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font=dict(size=16))
    fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def _rgba(colour: str, opacity: float) -> str:
    red, green, blue = plotly.colors.hex_to_rgb(colour)
    return f"rgba({red}, {green}, {blue}, {opacity})"


def _short(column: str) -> str:
    return column.removeprefix(SWEEP_PREFIX).replace("model_id", "model")


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _error_bar(mean: float, low: float, high: float, colour: str) -> dict:
    """A marker's 95% interval as plotly error bars; hidden when one run gives none."""
    spread = math.isfinite(low) and math.isfinite(high)
    return dict(type="data", array=[high - mean if spread else 0.0],
                arrayminus=[mean - low if spread else 0.0], visible=spread, color=colour,
                thickness=2, width=8)


def _finite(value: float) -> float | None:
    # JSON has no NaN: a missing interval travels in the figure as null.
    return value if math.isfinite(value) else None


def _text(value: object, spec: str = "g") -> str:
    """A cell value as a name shows it: whole floats without decimals (a budget read as
    1024.0), other values as they are."""
    if _missing(value):
        return "-"
    if isinstance(value, float | np.floating):
        return format(float(value), spec)
    return str(value)
