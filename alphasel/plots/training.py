"""Figures of a training run's alpha history (plotly): trajectories, animated surface, change.

A run directory's ``alpha_history.csv`` holds one row per measured module per measurement
(epoch 0 is before training; see :mod:`alphasel.training.history`). Every figure here starts
from :func:`read_history`, which takes the run directory, the CSV itself, or the history as a
DataFrame.

    fig = trajectories_figure("runs/train/<run-id>")
    save_figure(fig, "trajectories.html")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go

from alphasel.errors import PlotError
from alphasel.layout import KINDS
from alphasel.plots.tables import AlphaGrid, alpha_grid, grid_surface, is_bert_style, kind_label
from alphasel.training.history import (
    alpha_changes,
    alpha_history_table,
    module_names,
    read_alpha_history,
)
from alphasel.training.record import ALPHA_FILE

#: Figures of a run (also the CLI's `alphasel plot training RUN --figure NAME`).
TRAINING_FIGURES = ("trajectories", "surface", "change")
#: One colour per module kind, fixed by the kind's place in KINDS so that every figure of
#: every run shows a kind in the same colour.
KIND_COLOURS = {kind: plotly.colors.qualitative.D3[index % len(plotly.colors.qualitative.D3)]
                for index, kind in enumerate(KINDS)}
_UNKNOWN_COLOUR = "#7f7f7f"
_FIX = "train with --remeasure adapted or candidates"

Run = str | Path | pd.DataFrame


def kind_colour(kind: str) -> str:
    """The colour every training figure gives module kind ``kind``."""
    return KIND_COLOURS.get(kind, _UNKNOWN_COLOUR)


def read_history(run: Run) -> pd.DataFrame:
    """The alpha history of ``run`` (a run directory, its alpha_history.csv, or a DataFrame) in
    measurement order, types fixed (:func:`alphasel.training.history.alpha_history_table`).

    Raises :class:`PlotError` naming the run when the history is missing or empty.
    """
    if isinstance(run, pd.DataFrame):
        if run.empty:
            raise PlotError(f"the alpha history has an empty {ALPHA_FILE}: no alpha was "
                            f"measured; {_FIX}")
        return alpha_history_table(run)
    path = Path(run)
    file = path / ALPHA_FILE if path.is_dir() or path.suffix != ".csv" else path
    history = read_alpha_history(file)
    if history is None:
        raise PlotError(f"run '{path}' has no {ALPHA_FILE}: {_FIX} (not --remeasure none)")
    if history.empty:
        raise PlotError(f"run '{path}' has an empty {ALPHA_FILE}: no alpha was measured; {_FIX}")
    return history


def measurements(history: pd.DataFrame) -> list[tuple[int, float]]:
    """The (step, epoch) of each measurement, in the order they were taken."""
    pairs = history[["step", "epoch"]].drop_duplicates().sort_values(["step", "epoch"])
    return [(int(step), float(epoch)) for step, epoch in pairs.itertuples(index=False)]


def _title(what: str, run: Run) -> str:
    return what if isinstance(run, pd.DataFrame) else f"{what} — {Path(run).name}"


def _epoch_label(epoch: float) -> str:
    return f"{epoch:g}"


# ---- figures -----------------------------------------------------------------------------------

def trajectories_figure(run: Run) -> go.Figure:
    """Alpha of every module over the run's measurements (x = epoch), one line per module.

    Lines are coloured by kind and grouped by kind in the legend; adapted modules are solid
    with markers, the others dashed and faded.
    """
    history = read_history(run)
    bert_style = is_bert_style(history)
    fig = go.Figure()
    titled: set[str] = set()
    for name in module_names(history):
        rows = history[history["name"] == name]
        kind = rows["kind"].iloc[0]
        adapted = bool(rows["adapted"].any())
        label = kind_label(kind, bert_style)
        fig.add_trace(go.Scatter(
            x=rows["epoch"].to_numpy(), y=rows["alpha"].to_numpy(), name=name,
            mode="lines+markers" if adapted else "lines",
            line=dict(color=kind_colour(kind), dash="solid" if adapted else "dash",
                      width=2.0 if adapted else 1.0),
            marker=dict(size=6), opacity=1.0 if adapted else 0.45,
            legendgroup=kind,
            legendgrouptitle_text=None if kind in titled else f"{label}",
            customdata=np.stack([rows["name"].to_numpy(dtype=object),
                                 rows["step"].to_numpy(dtype=object),
                                 np.where(rows["adapted"], "adapted", "not adapted")],
                                axis=-1),
            hovertemplate="%{customdata[0]} (%{customdata[2]})<br>epoch=%{x:g} "
                          "step=%{customdata[1]}<br>alpha=%{y:.3f}<extra></extra>",
        ))
        titled.add(kind)
    fig.update_layout(title=_title("alpha during training", run), xaxis_title="epoch",
                      yaxis_title="alpha", legend=dict(groupclick="toggleitem"),
                      hovermode="closest")
    return fig


def training_surface_figure(run: Run) -> go.Figure:
    """The 3D alpha surface (module kind × block × alpha) with one frame per measurement and a
    slider and play button to move through them. Axes and colours are fixed across frames."""
    history = read_history(run)
    taken = measurements(history)
    union = alpha_grid(history.drop_duplicates("name"), "the alpha history")
    grids = []
    for step, epoch in taken:
        rows = history[(history["step"] == step) & (history["epoch"] == epoch)]
        grids.append(_aligned(alpha_grid(rows, f"the measurement at step {step}"), union))
    values = np.concatenate([grid.values.ravel() for grid in grids])
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    pad = 0.05 * (high - low) or 0.5
    title = _title("alpha surface during training", run)
    frames = []
    for (step, epoch), grid in zip(taken, grids, strict=True):
        data = grid_surface(grid, title, "alpha", False).data
        data[0].update(cmin=low, cmax=high)
        frames.append(go.Frame(data=data, name=_frame_name(step, epoch),
                               layout=dict(title_text=f"{title} (epoch {_epoch_label(epoch)},"
                                                      f" step {step})")))
    fig = grid_surface(grids[0], frames[0].layout.title.text, "alpha", False)
    fig.data[0].update(cmin=low, cmax=high)
    fig.frames = frames
    fig.update_layout(
        scene_zaxis_range=[low - pad, high + pad],
        sliders=[dict(active=0, currentvalue=dict(prefix="measurement: "), pad=dict(t=40),
                      steps=[dict(label=f"epoch {_epoch_label(epoch)} (step {step})",
                                  method="animate",
                                  args=[[_frame_name(step, epoch)],
                                        dict(mode="immediate", frame=dict(duration=0,
                                             redraw=True), transition=dict(duration=0))])
                             for step, epoch in taken])],
        updatemenus=[dict(type="buttons", showactive=False, x=0.0, y=0.0, xanchor="right",
                          buttons=[dict(label="play", method="animate",
                                        args=[None, dict(frame=dict(duration=700, redraw=True),
                                                         fromcurrent=True)]),
                                   dict(label="pause", method="animate",
                                        args=[[None], dict(mode="immediate",
                                                           frame=dict(duration=0))])])],
    )
    return fig


def _frame_name(step: int, epoch: float) -> str:
    return f"step {step} epoch {_epoch_label(epoch)}"


def _aligned(grid: AlphaGrid, union: AlphaGrid) -> AlphaGrid:
    """``grid`` re-laid on ``union``'s blocks and kinds, so every frame has the same axes."""
    values = np.full(union.values.shape, np.nan, dtype="float64")
    names = union.names.copy()
    extra = {column: np.full(union.values.shape, np.nan if array.dtype != object else "",
                             dtype=array.dtype) for column, array in grid.extra.items()}
    for i, block in enumerate(grid.blocks):
        for j, kind in enumerate(grid.kinds):
            row, column = union.blocks.index(block), union.kinds.index(kind)
            values[row, column] = grid.values[i, j]
            names[row, column] = grid.names[i, j]
            for key, array in grid.extra.items():
                extra[key][row, column] = array[i, j]
    return AlphaGrid(union.blocks, union.kinds, union.labels, values, names, extra)


def alpha_change_figure(run: Run) -> go.Figure:
    """A bar per module of alpha(last measurement) − alpha(first), coloured by kind, in model
    order; adapted modules' bars are outlined in black and hatched."""
    changes = alpha_changes(read_history(run))
    bert_style = is_bert_style(changes)
    fig = go.Figure()
    for kind in dict.fromkeys(changes["kind"]):
        rows = changes[changes["kind"] == kind]
        adapted = rows["adapted"].to_numpy()
        fig.add_trace(go.Bar(
            x=rows["name"].to_numpy(), y=rows["change"].to_numpy(),
            name=kind_label(kind, bert_style),
            marker=dict(color=kind_colour(kind),
                        line=dict(color=np.where(adapted, "black", "rgba(0,0,0,0)").tolist(),
                                  width=np.where(adapted, 2.0, 0.0).tolist()),
                        pattern=dict(shape=np.where(adapted, "/", "").tolist())),
            customdata=np.stack([np.where(adapted, "adapted", "not adapted"),
                                 rows["first"].to_numpy(), rows["last"].to_numpy(),
                                 rows["first_epoch"].to_numpy(), rows["last_epoch"].to_numpy()],
                                axis=-1).astype(object),
            hovertemplate="%{x} (%{customdata[0]})<br>Δ alpha=%{y:.3f}<br>"
                          "alpha %{customdata[1]:.3f} (epoch %{customdata[3]}) → "
                          "%{customdata[2]:.3f} (epoch %{customdata[4]})<extra></extra>",
        ))
    fig.add_hline(y=0.0, line_color="grey", line_width=1)
    fig.update_layout(
        title=_title("alpha change over training (last − first; hatched: adapted)", run),
        yaxis_title="Δ alpha", legend_title="module kind", barmode="overlay",
        xaxis=dict(title="module (model order)", type="category", categoryorder="array",
                   categoryarray=changes["name"].tolist(), tickangle=-60),
    )
    return fig


def training_figure(name: str, run: Run) -> go.Figure:
    """Draw training figure ``name`` (one of :data:`TRAINING_FIGURES`) of ``run``."""
    if name not in TRAINING_FIGURES:
        raise PlotError(f"unknown training figure '{name}': choose one of "
                        f"{', '.join(TRAINING_FIGURES)} (--figure)")
    draw = {"trajectories": trajectories_figure, "surface": training_surface_figure,
            "change": alpha_change_figure}[name]
    return draw(run)
