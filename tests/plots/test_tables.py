"""Figures of the alpha table: the data in each trace, not only that a figure exists."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from alphasel.errors import PlotError, TableError
from alphasel.plots import output
from alphasel.plots import tables as plots
from alphasel.table import read_table, write_table

LLAMA_KINDS = [("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
               ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
               ("down", "mlp.down_proj")]
BERT_KINDS = [("q", "attention.self.query"), ("k", "attention.self.key"),
              ("v", "attention.self.value"), ("o", "attention.output.dense"),
              ("up", "intermediate.dense"), ("down", "output.dense")]


def make_table(prefix: str, kinds: list[tuple[str, str]], blocks: int,
               extra: list[dict] | None = None) -> pd.DataFrame:
    """A table whose alpha encodes its cell: alpha = 2 + block + kind_index / 10."""
    rows = []
    for block in range(blocks):
        for index, (kind, suffix) in enumerate(kinds):
            rows.append(dict(name=f"{prefix}.{block}.{suffix}", block=block, kind=kind,
                             rows=64, cols=64, alpha=2.0 + block + index / 10,
                             xmin=0.1 * (block + 1), D=0.01 * (index + 1), status="ok"))
    rows += extra or []
    table = pd.DataFrame(rows)
    table["block"] = table["block"].astype("Int64")
    return table


@pytest.fixture
def llama() -> pd.DataFrame:
    """Llama-style, 3 blocks; block 1's o_proj had no fit, block 2 has no gate_proj; rows are
    shuffled so that figure order cannot come from row order."""
    table = make_table("model.layers", LLAMA_KINDS, 3, extra=[
        dict(name="model.embed_tokens", block=pd.NA, kind="embed", rows=100, cols=64,
             alpha=7.5, xmin=1.0, D=0.2, status="ok"),
        dict(name="lm_head", block=pd.NA, kind="head", rows=100, cols=64, alpha=math.nan,
             xmin=math.nan, D=math.nan, status="too few eigenvalues"),
    ])
    table.loc[table["name"] == "model.layers.1.self_attn.o_proj",
              ["alpha", "xmin", "D", "status"]] = [math.nan, math.nan, math.nan, "no fit"]
    table = table[table["name"] != "model.layers.2.mlp.gate_proj"]
    table = table.sample(frac=1.0, random_state=0).reset_index(drop=True)
    table.attrs["alphasel"] = {"model_id": "toy/llama", "estimator": "ks", "downsample": "none"}
    return table


@pytest.fixture
def bert() -> pd.DataFrame:
    # MiniLM names: no `bert.` prefix.
    return make_table("encoder.layer", BERT_KINDS, 2, extra=[
        dict(name="embeddings.word_embeddings", block=pd.NA, kind="embed", rows=300, cols=64,
             alpha=4.0, xmin=1.0, D=0.1, status="ok"),
        dict(name="pooler.dense", block=pd.NA, kind="other", rows=64, cols=64, alpha=3.0,
             xmin=1.0, D=0.1, status="ok"),
    ])


def alpha_at(table: pd.DataFrame, block: int, kind: str) -> float:
    row = table[(table["block"] == block) & (table["kind"] == kind)]
    return float(row["alpha"].iloc[0]) if len(row) else math.nan


def assert_same(actual, expected) -> None:
    np.testing.assert_array_equal(np.asarray(actual, dtype=float),
                                  np.asarray(expected, dtype=float))


# ---- the grid --------------------------------------------------------------------------------

def test_grid_holds_each_alpha_at_its_block_and_kind(llama):
    grid = plots.alpha_grid(llama)
    assert grid.blocks == [0, 1, 2]
    assert grid.kinds == ["q", "k", "v", "o", "gate", "up", "down"]
    assert grid.labels == grid.kinds
    for i, block in enumerate(grid.blocks):
        for j, kind in enumerate(grid.kinds):
            expected = alpha_at(llama, block, kind)
            assert grid.values[i, j] == expected or (math.isnan(expected)
                                                     and math.isnan(grid.values[i, j]))
    assert math.isnan(grid.value(1, "o"))  # no fit
    assert math.isnan(grid.value(2, "gate"))  # no matrix
    assert grid.value(2, "down") == pytest.approx(2.0 + 2 + 0.6)
    assert grid.names[1, 3] == "model.layers.1.self_attn.o_proj"
    assert grid.names[2, 4] == "(no matrix)"
    assert grid.extra["status"][1, 3] == "no fit"
    assert grid.extra["xmin"][2, 0] == pytest.approx(0.3)
    assert grid.extra["D"][0, 6] == pytest.approx(0.07)


def test_bert_kinds_get_bert_labels(bert):
    grid = plots.alpha_grid(bert)
    assert grid.kinds == ["q", "k", "v", "o", "up", "down"]
    assert grid.labels == ["query", "key", "value", "attn-out", "intermediate", "output"]
    assert grid.value(1, "up") == pytest.approx(2.0 + 1 + 0.4)


def test_fused_qkv_in_the_order_of_table_kinds():
    gpt2 = make_table("transformer.h", [("down", "mlp.c_proj"), ("qkv", "attn.c_attn"),
                                        ("up", "mlp.c_fc"), ("o", "attn.c_proj")], 2)
    grid = plots.alpha_grid(gpt2)
    assert grid.labels == ["o", "qkv", "up", "down"]  # layout.KINDS order, not row order
    assert grid.value(1, "qkv") == pytest.approx(2.0 + 1 + 0.1)


def test_several_matrices_in_one_cell_are_averaged(llama):
    expert = dict(name="model.layers.0.mlp.experts.1.up_proj", block=0, kind="up", alpha=10.0)
    table = pd.concat([llama, pd.DataFrame([expert])], ignore_index=True)
    grid = plots.alpha_grid(table)
    assert grid.value(0, "up") == pytest.approx((2.5 + 10.0) / 2)
    assert "+1 more" in grid.names[0, 5]


def test_grid_survives_a_csv_round_trip(llama, tmp_path):
    path = write_table(llama, tmp_path / "alpha.csv")
    assert_same(plots.alpha_grid(read_table(path)).values, plots.alpha_grid(llama).values)


# ---- figures ---------------------------------------------------------------------------------

def test_surface_traces_axes_and_hover(llama):
    fig = plots.surface_figure(llama)
    surface, points = fig.data
    assert isinstance(surface, go.Surface) and isinstance(points, go.Scatter3d)
    assert list(fig.layout.scene.xaxis.ticktext) == ["q", "k", "v", "o", "gate", "up", "down"]
    assert list(fig.layout.scene.xaxis.tickvals) == list(range(7))
    assert list(surface.y) == [0, 1, 2]
    assert_same(surface.z, plots.alpha_grid(llama).values)
    assert math.isnan(surface.z[1][3]) and math.isnan(surface.z[2][4])
    # Hover: full name, alpha, xmin and D of the cell under the cursor.
    for field in ("customdata[0]", "alpha=", "xmin=", "D="):
        assert field in surface.hovertemplate
    name, xmin, d, status = surface.customdata[0][6]
    assert (name, xmin, d, status) == ("model.layers.0.mlp.down_proj", pytest.approx(0.1),
                                       pytest.approx(0.07), "ok")
    assert len(points.z) == 3 * 7 - 2  # every fitted matrix, none of the gaps
    assert "toy/llama" in fig.layout.title.text


def test_heatmap_is_the_surface_in_2d(bert):
    fig = plots.heatmap_figure(bert)
    (heatmap,) = fig.data
    assert isinstance(heatmap, go.Heatmap)
    assert list(heatmap.x) == ["query", "key", "value", "attn-out", "intermediate", "output"]
    assert list(fig.layout.xaxis.categoryarray) == list(heatmap.x)
    assert list(heatmap.y) == [0, 1]
    assert heatmap.z[0][5] == pytest.approx(2.5)
    assert heatmap.customdata[1][0][0] == "encoder.layer.1.attention.self.query"


def test_layers_one_line_per_kind_with_band(llama):
    fig = plots.layers_figure(llama)
    assert [trace.name for trace in fig.data] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert all(isinstance(trace, go.Scatter) for trace in fig.data)
    o_line = fig.data[3]
    assert list(o_line.x) == [0, 1, 2]
    assert o_line.y[0] == pytest.approx(2.3) and math.isnan(o_line.y[1])
    assert o_line.connectgaps is False
    (band,) = fig.layout.shapes
    assert (band.y0, band.y1) == (2.0, 6.0)
    assert o_line.error_y.array is None  # no alpha_std column, no error bars


def test_layers_show_downsampling_spread(llama):
    table = llama.assign(alpha_std=0.25)
    q_line = plots.layers_figure(table).data[0]
    assert_same(q_line.error_y.array, [0.25, 0.25, 0.25])


def test_kinds_box_per_kind_in_order(llama):
    fig = plots.kinds_figure(llama)
    assert all(isinstance(trace, go.Box) for trace in fig.data)
    assert [trace.name for trace in fig.data] == ["q", "k", "v", "o", "gate", "up", "down",
                                                  "embed", "head"]
    by_name = {trace.name: trace for trace in fig.data}
    assert sorted(by_name["o"].y) == pytest.approx([2.3, 4.3])  # the unfitted one is left out
    assert len(by_name["head"].y) == 0  # no fit at all: an empty box, not an error
    assert list(fig.layout.xaxis.categoryarray)[:2] == ["q", "k"]


def test_bert_kinds_figure_uses_bert_labels(bert):
    names = [trace.name for trace in plots.kinds_figure(bert).data]
    assert names == ["query", "key", "value", "attn-out", "intermediate", "output", "embed",
                     "other"]


def test_difference_is_matched_by_name(llama):
    other = llama.copy()
    other["alpha"] = other["alpha"] - 0.5
    other.loc[other["name"] == "model.layers.0.self_attn.q_proj", "alpha"] = 1.0
    other = other[other["name"] != "model.layers.2.mlp.up_proj"]
    other = other.iloc[::-1]  # matching must not rely on row order
    other.attrs["alphasel"] = {"model_id": "toy/llama", "estimator": "ks",
                               "downsample": {"mode": "common", "shape": [32, 32]}}
    fig = plots.difference_figure(llama, other)
    surface = fig.data[0]
    assert isinstance(surface, go.Surface) and surface.cmid == 0.0
    z = np.asarray(surface.z, dtype=float)
    assert z[0][0] == pytest.approx(2.0 - 1.0)
    assert z[1][0] == pytest.approx(0.5)
    assert math.isnan(z[2][5])  # only in the first table
    assert math.isnan(z[1][3])  # no fit in either
    title = fig.layout.title.text
    assert title.startswith("Δ alpha: toy/llama (ks) − toy/llama (ks, downsample=common 32×32)")
    heatmap = plots.difference_figure(llama, other, kind="heatmap").data[0]
    assert isinstance(heatmap, go.Heatmap)
    assert_same(heatmap.z, z)


def test_difference_of_like_tables_is_titled_by_path(llama):
    first, second = llama.copy(), llama.copy()
    first.attrs["alphasel"] = {**llama.attrs["alphasel"], "path": "seed0/alpha.csv"}
    second.attrs["alphasel"] = {**llama.attrs["alphasel"], "path": "seed1/alpha.csv"}
    fig = plots.difference_figure(first, second, kind="heatmap")
    assert fig.layout.title.text == "Δ alpha: seed0/alpha.csv − seed1/alpha.csv"
    assert np.nanmax(np.abs(np.asarray(fig.data[0].z, dtype=float))) == 0.0


def test_difference_without_shared_names_says_so(llama, bert):
    with pytest.raises(PlotError, match="share no module names"):
        plots.difference_figure(llama, bert)


@pytest.mark.parametrize("name", plots.PLOT_NAMES)
def test_no_alpha_at_all_never_breaks_a_figure(llama, name):
    table = llama.assign(alpha=math.nan, status="no fit")
    fig = plots.figure(name, table)
    assert len(fig.data) > 0
    if name in ("surface", "heatmap"):
        assert np.isnan(np.asarray(fig.data[0].z, dtype=float)).all()


def test_figure_dispatches_and_rejects(llama):
    assert isinstance(plots.figure("heatmap", llama).data[0], go.Heatmap)
    assert isinstance(plots.figure("surface", llama, llama).data[0], go.Surface)
    with pytest.raises(PlotError, match="unknown plot 'surfac'"):
        plots.figure("surfac", llama)
    with pytest.raises(PlotError, match="--vs draws a difference"):
        plots.figure("layers", llama, llama)


def test_bad_tables_raise(llama):
    with pytest.raises(TableError, match="lacks column"):
        plots.surface_figure(llama.drop(columns=["kind"]))
    with pytest.raises(TableError, match="is empty"):
        plots.layers_figure(llama.iloc[:0])
    outside = llama[llama["block"].isna()]
    with pytest.raises(PlotError, match="no matrices inside transformer blocks"):
        plots.heatmap_figure(outside)


# ---- saving ----------------------------------------------------------------------------------

def test_html_is_self_contained(llama, tmp_path):
    path = output.save_figure(plots.heatmap_figure(llama), tmp_path / "sub" / "h.html")
    text = path.read_text()
    assert "Plotly.newPlot" in text and '<script src="http' not in text
    assert len(text) > 1_000_000  # plotly.js itself is inlined
    assert [p.name for p in path.parent.iterdir()] == ["h.html"]


def test_unknown_suffix_writes_nothing(llama, tmp_path):
    with pytest.raises(PlotError, match=r"\.html"):
        output.save_figure(plots.kinds_figure(llama), tmp_path / "k.txt")
    assert list(tmp_path.iterdir()) == []


def test_png_without_exporter_says_how_to_get_one(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(output, "static_exporter_available", lambda: False)
    with pytest.raises(PlotError, match="pip install kaleido"):
        output.save_figure(plots.kinds_figure(llama), tmp_path / "k.png")
    assert list(tmp_path.iterdir()) == []


def test_png_without_a_browser_names_one_to_install(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(output, "static_exporter_available", lambda: True)
    monkeypatch.setattr(output, "browser_for_static_export", lambda: None)
    with pytest.raises(PlotError, match="finds neither: install one .*apt-get install chromium"):
        output.save_figure(plots.kinds_figure(llama), tmp_path / "k.pdf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(output.browser_for_static_export() is None,
                    reason="kaleido finds no Chrome or Chromium on this machine")
def test_png_through_kaleido_and_the_machines_chromium(llama, tmp_path):
    path = output.save_figure(plots.kinds_figure(llama), tmp_path / "k.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_png_with_exporter_is_written_atomically(llama, tmp_path, monkeypatch):
    formats = []

    def fake_write_image(fig, file, format=None, **kwargs):
        formats.append(format)
        open(file, "wb").write(b"\x89PNG fake")

    monkeypatch.setattr(output, "static_exporter_available", lambda: True)
    monkeypatch.setattr(output, "browser_for_static_export", lambda: "/usr/bin/chromium")
    monkeypatch.setattr(go.Figure, "write_image", fake_write_image)
    path = output.save_figure(plots.kinds_figure(llama), tmp_path / "k.png")
    assert formats == ["png"] and path.read_bytes() == b"\x89PNG fake"
    assert [p.name for p in tmp_path.iterdir()] == ["k.png"]

    def broken_write_image(fig, file, format=None, **kwargs):
        open(file, "wb").write(b"half")
        raise RuntimeError("Chrome not found")

    monkeypatch.setattr(go.Figure, "write_image", broken_write_image)
    with pytest.raises(PlotError, match="check the browser it drives"):
        output.save_figure(plots.kinds_figure(llama), tmp_path / "broken.png")
    assert [p.name for p in tmp_path.iterdir()] == ["k.png"]
