import pandas as pd
import pytest
from helpers import ANALYSIS_LLAMA, tiny_llama
from safetensors.torch import save_file

from alphasel.cli import main
from alphasel.table import latest_analysis, read_table


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny_llama(layers=2, **ANALYSIS_LLAMA)
    state = {f"{name}": tensor.contiguous() for name, tensor in model.state_dict().items()
             if name != "lm_head.weight"}  # tied to the embedding; safetensors refuses shares
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(state, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_out_writes_exactly_the_table(checkpoint, tmp_path, runs, capsys, suffix):
    out = tmp_path / f"alpha{suffix}"
    assert main(["analyze", str(checkpoint), "--out", str(out), "--quiet"]) == 0
    table = read_table(out)
    assert len(table) == 15 and {"name", "alpha", "status"} <= set(table.columns)
    printed = capsys.readouterr().out
    assert "per kind:" in printed and "highest alpha:" in printed and str(out) in printed
    assert not runs.exists()  # --out means nothing under runs/


def test_default_output_goes_to_runs_and_becomes_latest(checkpoint, runs, capsys):
    assert main(["analyze", str(checkpoint), "--quiet"]) == 0
    path = latest_analysis()
    assert path.is_relative_to(runs.resolve())
    assert path.parent.parent.name == "ckpt"
    table = read_table(path)
    assert table.attrs["alphasel"]["estimator"] == "ks"
    assert table["block"].dtype == pd.Int64Dtype()
    assert str(path) in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["./no/such/dir/"], "does not exist"),
    (["nobody/not-cached-model"], "not in the cache"),
    (["{ckpt}", "--estimator", "mle"], "unknown estimator 'mle': choose one of ks, median, peak"),
    (["{ckpt}", "--out", "{tmp}/alpha.xlsx"], "cannot tell the table format"),
    (["{empty}"], "no weights in"),
    (["{corrupt}"], "not a valid safetensors file"),
])
def test_bad_input_is_one_line_exit_2_no_output(args, message, checkpoint, tmp_path, runs,
                                                offline_hub, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    args = [a.format(ckpt=checkpoint, tmp=tmp_path, empty=tmp_path / "empty",
                     corrupt=tmp_path / "corrupt.safetensors") for a in args]
    out = tmp_path / "out.csv"
    extra = [] if "--out" in args else ["--out", str(out)]
    assert main(["analyze", *args, *extra, "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert not out.exists() and not (tmp_path / "alpha.xlsx").exists()
    assert not runs.exists()
