"""`alphasel plot`: writes a self-contained figure and prints its path; bad input is one line."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from alphasel.cli import main
from alphasel.plots import output
from alphasel.plots import tables as plots
from alphasel.table import save_analysis, write_table

KINDS = [("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
         ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
         ("down", "mlp.down_proj")]


def llama_table(shift: float = 0.0, prefix: str = "model.layers") -> pd.DataFrame:
    rows = [dict(name=f"{prefix}.{block}.{suffix}", block=block, kind=kind, rows=32, cols=32,
                 alpha=2.0 + block + index / 10 + shift, xmin=0.5, D=0.05, status="ok")
            for block in range(2) for index, (kind, suffix) in enumerate(KINDS)]
    rows[3].update(alpha=math.nan, status="no fit")
    table = pd.DataFrame(rows)
    table["block"] = table["block"].astype("Int64")
    table.attrs["alphasel"] = {"model_id": "toy/llama", "estimator": "ks"}
    return table


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ALPHASEL_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture
def table_path(tmp_path) -> Path:
    return write_table(llama_table(), tmp_path / "a.csv")


@pytest.mark.parametrize("plot", plots.PLOT_NAMES)
def test_each_plot_writes_html_and_prints_its_path(plot, table_path, tmp_path, runs, capsys):
    out = tmp_path / "figs" / f"{plot}.html"
    assert main(["plot", plot, str(table_path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    assert "Plotly.newPlot" in text and '<script src="http' not in text
    assert "model.layers.1.mlp.down_proj" in text  # hover data made it into the file


def test_table_defaults_to_latest_analysis(runs, capsys):
    save_analysis(llama_table(), "toy/llama")
    assert main(["plot", "heatmap"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == runs / "plots" / "toy--llama-heatmap.html"
    assert printed.is_file()


def test_vs_draws_the_difference(table_path, tmp_path, runs, capsys):
    other = write_table(llama_table(shift=-1.0), tmp_path / "b.csv")
    out = tmp_path / "diff.html"
    assert main(["plot", "surface", str(table_path), "--vs", str(other), "--out", str(out)]) == 0
    html = out.read_text()
    # plotly's JSON engine may write the Δ raw (orjson) or escaped (json): accept either.
    assert "Δ alpha" in html or "\\u0394 alpha" in html


def test_vs_default_name_tells_two_analyses_of_one_model_apart(runs, capsys):
    first = save_analysis(llama_table(), "toy/llama")
    second = save_analysis(llama_table(shift=0.5), "toy/llama")
    assert main(["plot", "heatmap", str(first), "--vs", str(second)]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.name == f"toy--llama-heatmap-vs-{second.parent.name}.html"
    assert printed.is_file()


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize("case, message", [
    ("unknown plot", "unknown plot 'surfce'"),
    ("missing columns", "lacks column(s) alpha"),
    ("empty table", "is empty"),
    ("no block rows", "no matrices inside transformer blocks"),
    ("missing table", "does not exist"),
    ("vs shares no names", "share no module names"),
    ("vs with layers", "--vs draws a difference"),
    ("bad suffix", "use a file ending in .html"),
    ("png without kaleido", "pip install kaleido"),
])
def test_bad_input_is_one_line_exit_2_and_no_file(case, message, table_path, tmp_path, runs,
                                                  capsys, monkeypatch):
    out = tmp_path / "out" / "fig.html"
    plot, table, extra = "surface", str(table_path), []
    if case == "unknown plot":
        plot = "surfce"
    elif case == "missing columns":
        table = str(write_table(llama_table().drop(columns=["alpha"]), tmp_path / "c.csv"))
    elif case == "empty table":
        table = str(write_table(llama_table().iloc[:0], tmp_path / "e.csv"))
    elif case == "no block rows":
        table = str(write_table(llama_table().assign(block=pd.NA), tmp_path / "n.csv"))
    elif case == "missing table":
        table = str(tmp_path / "nowhere.csv")
    elif case == "vs shares no names":
        other = write_table(llama_table(prefix="encoder.layer"), tmp_path / "o.csv")
        extra = ["--vs", str(other)]
    elif case == "vs with layers":
        plot, extra = "layers", ["--vs", table]
    elif case == "bad suffix":
        out = tmp_path / "out" / "fig.txt"
    elif case == "png without kaleido":
        monkeypatch.setattr(output, "static_exporter_available", lambda: False)
        out = tmp_path / "out" / "fig.png"
    assert main(["plot", plot, table, *extra, "--out", str(out)]) == 2
    line = error_line(capsys)
    assert line.startswith("alphasel plot: error:") and message in line
    assert not out.parent.exists()


def test_no_analysis_yet_is_one_line(runs, capsys):
    assert main(["plot", "surface", "--out", str(runs / "x.html")]) == 2
    assert "alphasel analyze MODEL" in error_line(capsys)
    assert not (runs / "x.html").exists()
