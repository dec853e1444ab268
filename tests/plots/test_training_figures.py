"""Figures of a run's alpha history: each figure's data matches the hand-made history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphasel.cli import main
from alphasel.errors import PlotError
from alphasel.plots import training as training_plots
from alphasel.plots.training import (
    alpha_change_figure,
    kind_colour,
    read_history,
    training_surface_figure,
    trajectories_figure,
)

KINDS = [("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
         ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
         ("down", "mlp.down_proj")]
EPOCHS = [0, 1, 2]
ADAPTED = {"q", "v"}


def alpha_of(block: int, index: int, epoch: int) -> float:
    """Distinct, known alpha per (block, kind, epoch)."""
    return 2.0 + block + index / 10 + epoch * (0.5 if index % 2 else -0.25)


def write_history(run: Path) -> pd.DataFrame:
    rows = [dict(epoch=epoch, step=epoch * 10, name=f"model.layers.{block}.{suffix}",
                 block=block, kind=kind, alpha=alpha_of(block, index, epoch), xmin=0.5, D=0.05,
                 num_pl_spikes=3, adapted=kind in ADAPTED)
            for epoch in EPOCHS for block in range(2)
            for index, (kind, suffix) in enumerate(KINDS)]
    history = pd.DataFrame(rows)
    run.mkdir(parents=True, exist_ok=True)
    # Written in reverse so the figures must sort by measurement, not trust file order.
    history.iloc[::-1].to_csv(run / "alpha_history.csv", index=False)
    return history


@pytest.fixture
def run(tmp_path) -> Path:
    path = tmp_path / "20250101T000000Z-toy-llama-lowest-k2-lora"
    write_history(path)
    return path


def test_trajectories_one_line_per_module_with_its_alphas_in_epoch_order(run):
    fig = trajectories_figure(run)
    assert len(fig.data) == 2 * len(KINDS)
    # Model order: block 0's kinds in KINDS order, then block 1's.
    assert [trace.name for trace in fig.data[:2]] == ["model.layers.0.self_attn.q_proj",
                                                       "model.layers.0.self_attn.k_proj"]
    by_name = {trace.name: trace for trace in fig.data}
    line = by_name["model.layers.1.mlp.up_proj"]
    assert list(line.x) == EPOCHS
    np.testing.assert_allclose(line.y, [alpha_of(1, 5, epoch) for epoch in EPOCHS])
    assert [row[1] for row in line.customdata] == [0, 10, 20]  # steps for hover


def test_trajectories_colour_by_kind_and_mark_adapted(run):
    fig = trajectories_figure(run)
    for trace in fig.data:
        kind = trace.legendgroup
        assert trace.name.endswith(dict(KINDS)[kind])
        assert trace.line.color == kind_colour(kind)
        adapted = kind in ADAPTED
        assert (trace.line.dash == "solid") is adapted
        assert ("markers" in trace.mode) is adapted
        assert (trace.opacity == 1.0) is adapted
    assert len({kind_colour(kind) for kind, _ in KINDS}) == len(KINDS)
    # One legend-group title per kind.
    titles = [trace.legendgrouptitle.text for trace in fig.data if trace.legendgrouptitle.text]
    assert sorted(titles) == sorted(kind for kind, _ in KINDS)


def test_surface_has_one_frame_per_epoch_with_that_epochs_alphas(run):
    fig = training_surface_figure(run)
    assert len(fig.frames) == len(EPOCHS)
    assert len(fig.layout.sliders[0].steps) == len(EPOCHS)
    assert fig.layout.updatemenus[0].buttons[0].label == "play"
    kinds = [kind for kind, _ in KINDS]
    assert list(fig.layout.scene.xaxis.ticktext) == kinds  # column j of z is kind j
    for epoch, frame in zip(EPOCHS, fig.frames, strict=True):
        surface = frame.data[0]
        assert list(surface.y) == [0, 1]
        z = np.asarray(surface.z, dtype=float)
        for block in range(2):
            for index in range(len(kinds)):
                assert z[block, index] == pytest.approx(alpha_of(block, index, epoch))
    # The figure opens on the first measurement, with a colour scale fixed across frames.
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float),
                               np.asarray(fig.frames[0].data[0].z, dtype=float))
    assert fig.frames[2].data[0].cmax == fig.data[0].cmax
    assert fig.data[0].cmax == pytest.approx(max(alpha_of(b, i, e) for b in range(2)
                                                 for i in range(7) for e in EPOCHS))


def test_change_bars_are_last_minus_first_in_model_order(run):
    fig = alpha_change_figure(run)
    assert [trace.name for trace in fig.data] == [kind for kind, _ in KINDS]
    bars = {}
    for trace in fig.data:
        assert trace.marker.color == kind_colour(trace.name)
        for x, y, shape in zip(trace.x, trace.y, trace.marker.pattern.shape, strict=True):
            bars[x] = y
            assert (shape == "/") is (trace.name in ADAPTED)
    for block in range(2):
        for index, (_, suffix) in enumerate(KINDS):
            name = f"model.layers.{block}.{suffix}"
            change = alpha_of(block, index, 2) - alpha_of(block, index, 0)
            assert bars[name] == pytest.approx(change)
    order = list(fig.layout.xaxis.categoryarray)
    assert order[:7] == [f"model.layers.0.{suffix}" for _, suffix in KINDS]
    assert order[7:] == [f"model.layers.1.{suffix}" for _, suffix in KINDS]


def test_history_as_dataframe_reads_string_booleans(run):
    history = pd.read_csv(run / "alpha_history.csv")
    history["adapted"] = history["adapted"].astype(str)
    read = read_history(history)
    assert read["adapted"].sum() == 2 * len(ADAPTED) * len(EPOCHS)
    assert list(read["epoch"].drop_duplicates()) == EPOCHS


@pytest.mark.parametrize("content", [None, "", "epoch,step,name,block,kind,alpha,adapted\n"])
def test_missing_or_empty_history_names_the_run_and_the_fix(tmp_path, content):
    run = tmp_path / "no-alpha-run"
    run.mkdir()
    if content is not None:
        (run / "alpha_history.csv").write_text(content)
    with pytest.raises(PlotError, match="no-alpha-run.*--remeasure adapted or candidates"):
        trajectories_figure(run)


def test_cli_writes_each_training_figure(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALPHASEL_RUNS", str(tmp_path / "runs"))
    for name in training_plots.TRAINING_FIGURES:
        out = tmp_path / "figs" / f"{name}.html"
        assert main(["plot", "training", str(run), "--figure", name, "--out", str(out)]) == 0
        assert capsys.readouterr().out.strip() == str(out)
        text = out.read_text()
        assert "Plotly.newPlot" in text and "model.layers.1.mlp.down_proj" in text


def test_cli_default_figure_is_trajectories(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALPHASEL_RUNS", str(tmp_path / "runs"))
    assert main(["plot", "training", str(run)]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.parent == tmp_path / "runs" / "plots"
    assert printed.name.endswith("-training-trajectories.html") and printed.is_file()


@pytest.mark.parametrize("argv", [
    ["--figure", "trajectories"],
    ["--figure", "nope"],
])
def test_cli_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch, argv,
                                                          run):
    monkeypatch.setenv("ALPHASEL_RUNS", str(tmp_path / "runs"))
    bare = tmp_path / "bare-run"
    bare.mkdir()
    target = bare if argv[1] == "trajectories" else run
    out = tmp_path / "out.html"
    assert main(["plot", "training", str(target), *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert ("bare-run" in err and "--remeasure" in err) if target == bare else "nope" in err
    assert not out.exists()


def test_figure_flag_without_training_is_an_error(tmp_path, capsys):
    assert main(["plot", "surface", str(tmp_path / "a.csv"), "--figure", "change"]) == 2
    assert "--figure" in capsys.readouterr().err
