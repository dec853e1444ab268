"""Figures of the alpha table (plotly): 3D surface, heatmap, layer-wise lines, per-kind boxes.

Every figure starts from :func:`alpha_grid`, a block × module-kind matrix of alpha values with
the full module name, xmin and D of each cell for hover. Cells without a matrix, or whose
matrix had no power-law fit, hold NaN and show as gaps; they never break a figure.

    fig = surface_figure(read_table("runs/analyses/.../alpha.csv"))
    save_figure(fig, "surface.html")        # alphasel.plots.output
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from alphasel.columns import REQUIRED_COLUMNS, metadata
from alphasel.errors import PlotError
from alphasel.layout import BLOCK_KINDS, KINDS
from alphasel.table import check_table

#: Figures :func:`figure` can draw, by name (also the CLI's `alphasel plot NAME`).
PLOT_NAMES = ("surface", "heatmap", "layers", "kinds")
#: The band where HT-SR reads a matrix as well trained (shaded on alpha axes).
WELL_TRAINED_BAND = (2.0, 6.0)

# BERT names its block matrices by role rather than by projection; researchers read those names.
_BERT_LABELS = {"q": "query", "k": "key", "v": "value", "o": "attn-out",
                "up": "intermediate", "down": "output"}
_BERT_MARKERS = ("attention.self.query", "intermediate.dense")
_OPTIONAL_NUMBERS = ("xmin", "D", "alpha_std")
_MISSING = "(no matrix)"


@dataclass
class AlphaGrid:
    """A block × kind matrix of values (alpha, or a difference of alphas) with hover data."""

    blocks: list[int]
    """Block indices, ascending: row i of every array is block ``blocks[i]``."""
    kinds: list[str]
    """Module kinds in canonical order: column j of every array is kind ``kinds[j]``."""
    labels: list[str]
    """Axis label of each kind, per model family (``query`` for BERT's ``q``)."""
    values: np.ndarray
    """float64 (blocks × kinds); NaN where no matrix or no fit."""
    names: np.ndarray
    """Full module name of each cell (object array), ``"(no matrix)"`` where none."""
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    """More per-cell columns for hover (xmin, D, status, ...), same shape as ``values``."""

    def value(self, block: int, kind: str) -> float:
        """The value at ``block`` and ``kind`` (NaN if that cell is empty)."""
        return float(self.values[self.blocks.index(block), self.kinds.index(kind)])


def is_bert_style(table: pd.DataFrame) -> bool:
    """True when module names follow BERT's layout (``attention.self.query``, ...)."""
    names = table["name"].astype(str)
    return bool(any(names.str.contains(marker, regex=False).any() for marker in _BERT_MARKERS))


def kind_label(kind: str, bert_style: bool) -> str:
    """How a figure labels a module kind for a model family."""
    return _BERT_LABELS.get(kind, kind) if bert_style else kind


def check_plot_name(name: str) -> str:
    """Return ``name`` if it names a figure, else raise :class:`PlotError`."""
    if name not in PLOT_NAMES:
        raise PlotError(f"unknown plot '{name}': choose one of {', '.join(PLOT_NAMES)}")
    return name


def _prepared(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """The columns figures use, with types fixed (CSV round trips and hand-made frames vary)."""
    check_table(table, required=REQUIRED_COLUMNS, source=source)
    frame = pd.DataFrame({
        "name": table["name"].astype(str),
        "block": pd.to_numeric(table["block"], errors="coerce").astype("Float64"),
        "kind": table["kind"].astype(str),
        "alpha": pd.to_numeric(table["alpha"], errors="coerce").astype("float64"),
    })
    for column in _OPTIONAL_NUMBERS:
        if column in table.columns:
            frame[column] = pd.to_numeric(table[column], errors="coerce").astype("float64")
    frame["status"] = table["status"].fillna("").astype(str) if "status" in table.columns else ""
    return frame.reset_index(drop=True)


def _block_rows(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    inside = frame[frame["block"].notna() & frame["kind"].isin(BLOCK_KINDS)].copy()
    if inside.empty:
        raise PlotError(f"{source} has no matrices inside transformer blocks (block and a kind "
                        f"among {', '.join(BLOCK_KINDS)}): nothing to draw by depth")
    inside["block"] = inside["block"].astype("int64")
    return inside


def _grid(rows: pd.DataFrame, value: str, extra: list[str], bert_style: bool) -> AlphaGrid:
    blocks = sorted(int(block) for block in rows["block"].unique())
    present = set(rows["kind"])
    kinds = [kind for kind in BLOCK_KINDS if kind in present]
    shape = (len(blocks), len(kinds))
    values = np.full(shape, np.nan, dtype="float64")
    names = np.full(shape, _MISSING, dtype=object)
    extras = {column: np.full(shape, np.nan, dtype="float64") for column in extra
              if column != "status"}
    if "status" in extra:
        extras["status"] = np.full(shape, "", dtype=object)
    row_of = {block: i for i, block in enumerate(blocks)}
    column_of = {kind: j for j, kind in enumerate(kinds)}
    for (block, kind), cell in rows.groupby(["block", "kind"], sort=False):
        i, j = row_of[int(block)], column_of[kind]
        # Several matrices in one cell (MoE experts) are averaged; hover says how many.
        values[i, j] = cell[value].mean()
        names[i, j] = cell["name"].iloc[0] + (f" (+{len(cell) - 1} more, mean shown)"
                                              if len(cell) > 1 else "")
        for column, array in extras.items():
            if column == "status":
                array[i, j] = "/".join(dict.fromkeys(cell["status"]))
            else:
                array[i, j] = cell[column].mean()
    labels = [kind_label(kind, bert_style) for kind in kinds]
    return AlphaGrid(blocks, kinds, labels, values, names, extras)


def alpha_grid(table: pd.DataFrame, source: str = "alpha table") -> AlphaGrid:
    """Alpha of every in-block matrix as a block × kind grid (the data of the surface).

    ``values[i, j]`` is the alpha of the matrix of kind ``kinds[j]`` in block ``blocks[i]``;
    NaN where that matrix is missing or had no fit. Raises :class:`TableError` for a table
    without the needed columns or rows, :class:`PlotError` when no row lies inside a block.
    """
    frame = _prepared(table, source)
    extra = [column for column in ("xmin", "D", "alpha_std") if column in frame.columns]
    return _grid(_block_rows(frame, source), "alpha", extra + ["status"], is_bert_style(frame))


def difference_grid(table: pd.DataFrame, other: pd.DataFrame) -> AlphaGrid:
    """alpha(table) − alpha(other), matched by module name, as a block × kind grid.

    Block and kind come from ``table``. ``extra`` holds each side's alpha for hover.
    """
    frame = _prepared(table, "first alpha table").drop_duplicates("name")
    second = _prepared(other, "second alpha table (--vs)").drop_duplicates("name")
    shared = frame.merge(second[["name", "alpha"]], on="name", suffixes=("_a", "_b"))
    if shared.empty:
        raise PlotError(f"'{_table_label(table, 'the first table')}' and "
                        f"'{_table_label(other, 'the --vs table')}' share no module names: "
                        "compare two analyses of the same model (or the same architecture)")
    shared["alpha"] = shared["alpha_a"] - shared["alpha_b"]
    rows = _block_rows(shared, "the shared part of the two tables")
    return _grid(rows, "alpha", ["alpha_a", "alpha_b"], is_bert_style(frame))


# ---- titles and hover ------------------------------------------------------------------------

def _downsample_label(setting: object) -> str:
    """``downsample=common 64×64`` from the analyzer's setting ("" when off)."""
    if isinstance(setting, dict):
        mode, shape = setting.get("mode"), setting.get("shape")
    else:
        mode, shape = setting, None
    if mode in (None, "", "none", False):
        return ""
    size = f" {shape[0]}×{shape[1]}" if isinstance(shape, list | tuple) and len(shape) == 2 else ""
    return f"downsample={mode}{size}"


def _table_label(table: pd.DataFrame, fallback: str) -> str:
    meta = metadata(table)
    parts = [str(meta["model_id"])] if meta.get("model_id") else []
    options = [str(meta["estimator"])] if meta.get("estimator") else []
    downsample = _downsample_label(meta.get("downsample"))
    if downsample:
        options.append(downsample)
    if options:
        parts.append(f"({', '.join(options)})")
    if not parts and meta.get("path"):
        parts.append(str(meta["path"]))
    return " ".join(parts) or fallback


def _title(what: str, table: pd.DataFrame) -> str:
    label = _table_label(table, "")
    return f"{what} — {label}" if label else what


def _customdata(grid: AlphaGrid, columns: list[str]) -> np.ndarray:
    """(blocks × kinds × 1+len(columns)) object array: name, then each hover column."""
    layers = [grid.names] + [grid.extra[column] for column in columns]
    return np.stack(layers, axis=-1).astype(object)


def _hovertemplate(value_label: str, columns: list[str], value_ref: str = "%{z}") -> str:
    formats = {"xmin": ":.4g", "D": ":.4f", "alpha_std": ":.3f", "alpha_a": ":.3f",
               "alpha_b": ":.3f", "status": ""}
    lines = ["%{customdata[0]}", f"{value_label}={value_ref}"]
    lines += [f"{column}=%{{customdata[{n + 1}]{formats.get(column, '')}}}"
              for n, column in enumerate(columns)]
    return "<br>".join(lines) + "<extra></extra>"


def _hover_columns(grid: AlphaGrid) -> list[str]:
    return [column for column in ("xmin", "D", "alpha_std", "status", "alpha_a", "alpha_b")
            if column in grid.extra]


# ---- figures -----------------------------------------------------------------------------------

def grid_surface(grid: AlphaGrid, title: str, value_label: str, diverging: bool) -> go.Figure:
    columns = _hover_columns(grid)
    x = np.arange(len(grid.kinds))
    color = dict(colorscale="RdBu_r", cmid=0.0) if diverging else dict(colorscale="Viridis")
    surface = go.Surface(
        x=x, y=grid.blocks, z=grid.values, customdata=_customdata(grid, columns),
        hovertemplate=_hovertemplate(value_label, columns), colorbar=dict(title=value_label),
        name=value_label, **color,
    )
    # Markers carry the hover of cells whose neighbours are NaN, which a surface cannot draw.
    rows, cols = np.nonzero(~np.isnan(grid.values))
    points = go.Scatter3d(
        x=x[cols], y=np.asarray(grid.blocks)[rows], z=grid.values[rows, cols],
        mode="markers", marker=dict(size=2.5, color="black"), showlegend=False,
        customdata=_customdata(grid, columns)[rows, cols],
        hovertemplate=_hovertemplate(value_label, columns), name="matrices",
    )
    fig = go.Figure([surface, points])
    fig.update_layout(
        title=title, height=700,
        scene=dict(
            xaxis=dict(title="module kind", tickvals=list(x), ticktext=grid.labels),
            yaxis=dict(title="block (depth)"),
            zaxis=dict(title=value_label),
        ),
    )
    return fig


def _heatmap(grid: AlphaGrid, title: str, value_label: str, diverging: bool) -> go.Figure:
    columns = _hover_columns(grid)
    color = dict(colorscale="RdBu_r", zmid=0.0) if diverging else dict(colorscale="Viridis")
    fig = go.Figure(go.Heatmap(
        x=grid.labels, y=grid.blocks, z=grid.values, customdata=_customdata(grid, columns),
        hovertemplate=_hovertemplate(value_label, columns), colorbar=dict(title=value_label),
        hoverongaps=True, **color,
    ))
    fig.update_layout(
        title=title, height=max(400, 18 * len(grid.blocks) + 150),
        xaxis=dict(title="module kind", type="category", categoryorder="array",
                   categoryarray=grid.labels),
        yaxis=dict(title="block (depth)"),
    )
    return fig


def surface_figure(table: pd.DataFrame) -> go.Figure:
    """3D alpha surface: module kind (x) × block depth (y) × alpha (z)."""
    return grid_surface(alpha_grid(table), _title("alpha surface", table), "alpha", False)


def heatmap_figure(table: pd.DataFrame) -> go.Figure:
    """The surface's 2D twin: block (rows) × module kind (columns), colour = alpha."""
    return _heatmap(alpha_grid(table), _title("alpha by block and kind", table), "alpha", False)


def _shade_well_trained(fig: go.Figure) -> None:
    low, high = WELL_TRAINED_BAND
    fig.add_hrect(y0=low, y1=high, fillcolor="green", opacity=0.12, line_width=0,
                  layer="below", annotation_text=f"well-trained {low:g}–{high:g}",
                  annotation_position="top left")


def layers_figure(table: pd.DataFrame) -> go.Figure:
    """Layer-wise alpha: alpha by block, one line per module kind, well-trained band shaded."""
    grid = alpha_grid(table)
    columns = _hover_columns(grid)
    customdata = _customdata(grid, columns)
    fig = go.Figure()
    for j, label in enumerate(grid.labels):
        std = grid.extra.get("alpha_std")
        fig.add_trace(go.Scatter(
            x=grid.blocks, y=grid.values[:, j], name=label, mode="lines+markers",
            connectgaps=False, customdata=customdata[:, j],
            hovertemplate=_hovertemplate("alpha", columns, "%{y:.3f}"),
            error_y=dict(type="data", array=std[:, j], visible=True) if std is not None else None,
        ))
    _shade_well_trained(fig)
    fig.update_layout(title=_title("layer-wise alpha", table), xaxis_title="block (depth)",
                      yaxis_title="alpha", legend_title="module kind", hovermode="closest")
    return fig


def kinds_figure(table: pd.DataFrame) -> go.Figure:
    """Distribution of alpha per module kind (boxes with every matrix as a point)."""
    frame = _prepared(table, "alpha table")
    bert_style = is_bert_style(frame)
    present = set(frame["kind"])
    # Kinds the layout module does not know still get a box, after the known ones.
    order = [kind for kind in KINDS if kind in present] + sorted(present - set(KINDS))
    labels = [kind_label(kind, bert_style) for kind in order]
    fig = go.Figure()
    for kind, label in zip(order, labels, strict=True):
        rows = frame[(frame["kind"] == kind) & frame["alpha"].notna()]
        fig.add_trace(go.Box(
            x=[label] * len(rows), y=rows["alpha"].to_numpy(), name=label, boxpoints="all",
            jitter=0.3, pointpos=0.0, customdata=rows[["name"]].to_numpy(),
            hovertemplate="%{customdata[0]}<br>alpha=%{y:.3f}<extra></extra>",
        ))
    _shade_well_trained(fig)
    fig.update_layout(
        title=_title("alpha per module kind", table), yaxis_title="alpha", showlegend=False,
        xaxis=dict(title="module kind", type="category", categoryorder="array",
                   categoryarray=labels),
    )
    return fig


def difference_figure(table: pd.DataFrame, other: pd.DataFrame,
                      kind: str = "surface") -> go.Figure:
    """alpha(table) − alpha(other) by block and kind, matched by module name.

    ``kind`` is ``"surface"`` (3D) or ``"heatmap"``. Red: ``table`` has the higher alpha.
    """
    if kind not in ("surface", "heatmap"):
        raise PlotError(f"a difference is drawn as 'surface' or 'heatmap', not '{kind}'")
    grid = difference_grid(table, other)
    first, second = _table_label(table, "table"), _table_label(other, "other")
    if first == second:
        # Same model and options (e.g. two seeds): only the files tell them apart.
        first, second = (str(metadata(t).get("path", fallback))
                         for t, fallback in ((table, "table"), (other, "other")))
    title = f"Δ alpha: {first} − {second}"
    draw = grid_surface if kind == "surface" else _heatmap
    return draw(grid, title, "Δ alpha", True)


def figure(name: str, table: pd.DataFrame, other: pd.DataFrame | None = None) -> go.Figure:
    """Draw figure ``name`` (one of :data:`PLOT_NAMES`); with ``other``, a difference figure."""
    check_plot_name(name)
    if other is not None:
        if name not in ("surface", "heatmap"):
            raise PlotError(f"--vs draws a difference surface or heatmap, not '{name}': use "
                            "`alphasel plot surface|heatmap TABLE --vs OTHER`")
        return difference_figure(table, other, kind=name)
    draw = {"surface": surface_figure, "heatmap": heatmap_figure,
            "layers": layers_figure, "kinds": kinds_figure}[name]
    return draw(table)
