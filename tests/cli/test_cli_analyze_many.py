"""`alphasel analyze A B C`: a table per checkpoint plus a combined table with a `model` column."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import ANALYSIS_LLAMA, tiny_llama
from safetensors.torch import save_file

from alphasel.cli import main
from alphasel.table import latest_analysis, read_table


def _checkpoint(folder: Path, seed: int) -> Path:
    """A 2-block Llama checkpoint directory (15 matrices)."""
    model = tiny_llama(layers=2, seed=seed, **ANALYSIS_LLAMA)
    folder.mkdir(parents=True)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()
               if name != "lm_head.weight"}, folder / "model.safetensors")
    return folder


@pytest.fixture
def checkpoints(tmp_path) -> list[Path]:
    """Three checkpoints of one "training run"."""
    return [_checkpoint(tmp_path / "run" / f"checkpoint-{step}", seed)
            for seed, step in enumerate((100, 200, 300))]


def test_out_dir_gets_a_table_per_model_and_a_combined_table(checkpoints, tmp_path, runs,
                                                             capsys):
    out = tmp_path / "tables"
    models = [str(path) for path in checkpoints]
    assert main(["analyze", *models, "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint-100.csv", "checkpoint-200.csv", "checkpoint-300.csv", "combined.csv"]
    combined = read_table(out / "combined.csv")
    assert combined.columns[0] == "model" and combined["model"].unique().tolist() == models
    for model, path in zip(models, checkpoints, strict=True):
        table = read_table(out / f"{path.name}.csv")
        rows = combined[combined["model"] == model].drop(columns="model")
        pd.testing.assert_frame_equal(rows.reset_index(drop=True), table, check_dtype=False)
    assert combined.groupby("model")["alpha"].mean().nunique() == 3  # three different models
    printed = capsys.readouterr().out
    assert printed.count("per kind:") == 3
    for name in ("checkpoint-100.csv", "checkpoint-200.csv", "checkpoint-300.csv"):
        assert f"table: {out / name}" in printed
    assert f"combined table (3 models): {out / 'combined.csv'}" in printed
    assert not runs.exists()


def test_default_output_goes_to_runs_with_a_combined_table(checkpoints, runs, capsys):
    assert main(["analyze", *map(str, checkpoints), "--quiet"]) == 0
    analyses = runs / "analyses"
    tables = sorted(analyses.glob("checkpoint-*/*/alpha.csv"))
    assert [path.parent.parent.name for path in tables] == [
        "checkpoint-100", "checkpoint-200", "checkpoint-300"]
    assert latest_analysis() == tables[-1].resolve()  # the last model, never the combined table
    (combined_path,) = analyses.glob("combined/*-ks/combined.csv")
    combined = read_table(combined_path)
    assert len(combined) == 45 and combined.columns[0] == "model"
    meta = json.loads((combined_path.parent / "meta.json").read_text())
    assert meta["table"] == "combined.csv"
    assert [entry["model"] for entry in meta["models"]] == list(map(str, checkpoints))
    assert [Path(entry["path"]) for entry in meta["models"]] == tables
    assert str(combined_path) in capsys.readouterr().out


def test_a_repeat_is_read_from_the_cache(checkpoints, tmp_path, capsys):
    models = [str(path) for path in checkpoints]
    assert main(["analyze", *models, "--out", str(tmp_path / "first"), "--quiet"]) == 0
    assert "from cache" not in capsys.readouterr().out
    assert main(["analyze", *models, "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert capsys.readouterr().out.count("15 from cache") == 3
    pd.testing.assert_frame_equal(read_table(tmp_path / "first" / "combined.csv"),
                                  read_table(tmp_path / "again" / "combined.csv"))


def test_checkpoints_with_one_name_get_files_of_their_own(tmp_path):
    models = [_checkpoint(tmp_path / run / "final", seed) for seed, run in enumerate("ab")]
    out = tmp_path / "tables"
    assert main(["analyze", *map(str, models), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["combined.csv", "final-2.csv", "final.csv"]
    assert read_table(out / "combined.csv")["model"].nunique() == 2


def test_one_model_writes_no_combined_table(checkpoints, tmp_path, runs, capsys):
    out = tmp_path / "alpha.csv"
    assert main(["analyze", str(checkpoints[0]), "--out", str(out), "--quiet"]) == 0
    assert list(tmp_path.glob("*.csv")) == [out] and "model" not in read_table(out).columns
    assert "combined" not in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["{a}", "{b}", "--adapter", "{tmp}/adapter"], "--adapter takes one base model, got 2"),
    (["{a}", "{b}", "--out", "{tmp}/alpha.csv"], "with several models --out is the directory"),
    (["{a}", "{b}", "{a}"], "is given more than once"),
    # Fails after two analyses: still nothing is written (their fits stay in the cache).
    (["{a}", "{b}", "{tmp}/no-such-checkpoint"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2_no_output(args, message, checkpoints, tmp_path, runs,
                                                capsys):
    args = [arg.format(a=checkpoints[0], b=checkpoints[1], tmp=tmp_path) for arg in args]
    assert main(["analyze", *args, "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert captured.out == "" and not runs.exists()
    assert not (tmp_path / "alpha.csv").exists()
