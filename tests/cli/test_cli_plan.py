"""`alphasel plan` end to end: exit codes, one-line errors, and no file written on error."""

from __future__ import annotations

import json

import pytest
from helpers import ANALYSIS_LLAMA, alpha_table, name, tiny_llama

import alphasel.cli
from alphasel.paths import runs_dir
from alphasel.table import save_analysis, write_table


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHASEL_RUNS", str(tmp_path / "runs"))
    # Only the plan command: the other commands' modules are not this test's concern.
    monkeypatch.setattr(alphasel.cli, "COMMANDS", {"plan": "alphasel.cli.plan"})
    return tmp_path / "runs"


@pytest.fixture
def analysis(runs):
    return save_analysis(alpha_table(tiny_llama(layers=4, **ANALYSIS_LLAMA)), "tiny-llama")


def plan_files(runs):
    return sorted((runs / "plans").glob("*.json")) if (runs / "plans").exists() else []


def test_plan_uses_latest_analysis_and_writes_under_runs_plans(runs, analysis, capsys):
    assert alphasel.cli.main(["plan", "--scheme", "blora", "--k", "2"]) == 0
    [path] = plan_files(runs)
    assert path.parent == runs_dir() / "plans"
    data = json.loads(path.read_text())
    assert data["scheme"] == "blora" and data["analysis_path"] == str(analysis.resolve())
    assert data["model_id"] == "tiny-llama"
    out = capsys.readouterr().out
    block_rows = [line.split()[0] for line in out.splitlines() if line[:5].strip().isdigit()]
    assert block_rows == ["1", "3"]
    assert f"{data['trainable_params']:,} trainable parameters" in out
    assert f"wrote {path}" in out


def test_plan_with_analysis_out_and_options(runs, tmp_path, capsys):
    table_path = write_table(alpha_table(tiny_llama(layers=4, **ANALYSIS_LLAMA)),
                             tmp_path / "alpha.csv")
    out = tmp_path / "plan.json"
    code = alphasel.cli.main(["plan", "--scheme", "alora", "--k", "2", "--order", "low",
                              "--kinds", "q,k,v", "--rank", "4", "--lora-alpha", "8",
                              "--analysis", str(table_path), "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert [m["name"] for m in data["modules"]] == [name(2, "q"), name(2, "v")]
    assert {(m["rank"], m["lora_alpha"]) for m in data["modules"]} == {(4, 8)}
    assert plan_files(runs) == []


def test_random_by_block_and_budget_from(runs, analysis, tmp_path):
    first = tmp_path / "random.json"
    assert alphasel.cli.main(["plan", "--scheme", "random", "--k", "2", "--unit", "block",
                              "--seed", "7", "--out", str(first)]) == 0
    reference = json.loads(first.read_text())
    assert reference["seed"] == 7 and len(reference["modules"]) == 14
    second = tmp_path / "alora.json"
    assert alphasel.cli.main(["plan", "--scheme", "alora", "--budget-from", str(first),
                              "--out", str(second)]) == 0
    matched = json.loads(second.read_text())
    target = reference["trainable_params"]
    assert abs(matched["trainable_params"] - target) <= 0.05 * target
    assert matched["budget_from"] == str(first)


@pytest.mark.parametrize(("argv", "message"), [
    (["--scheme", "blora", "--k", "9"], "larger than the 4"),
    (["--scheme", "alora", "--k", "0"], "must be a whole number"),
    (["--scheme", "best", "--k", "2"], "alora, blora, spectrum, random, first, last, band, all"),
    (["--scheme", "alora", "--k", "2", "--kinds", "q,z"], "unknown kind 'z'"),
    (["--scheme", "alora", "--k", "2", "--rank-alloc", "alpha", "--budget", "5"], "below"),
])
def test_bad_input_is_one_line_exit_2_and_no_file(runs, analysis, tmp_path, capsys, argv,
                                                  message):
    out = tmp_path / "plan.json"
    assert alphasel.cli.main(["plan", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alphasel plan: error:")
    assert message in err
    assert not out.exists() and plan_files(runs) == []


def test_no_analysis_found(runs, capsys):
    assert alphasel.cli.main(["plan", "--scheme", "blora", "--k", "2"]) == 2
    err = capsys.readouterr().err
    assert "no analysis found" in err and err.count("\n") == 1
    assert plan_files(runs) == []


def test_table_without_required_columns(runs, tmp_path, capsys):
    table = alpha_table(tiny_llama(layers=4, **ANALYSIS_LLAMA)).drop(columns=["kind"])
    path = write_table(table, tmp_path / "alpha.csv")
    assert alphasel.cli.main(["plan", "--scheme", "first", "--k", "1",
                              "--analysis", str(path)]) == 2
    err = capsys.readouterr().err
    assert "lacks column(s) kind" in err and err.count("\n") == 1
    assert plan_files(runs) == []


def test_plan_from_an_analysis_carries_the_models_total_params(runs, tmp_path, capsys):
    """The analyzer records the parameters of every weight matrix; `alphasel plan` puts them
    in the plan, so its share of the model is known without training."""
    from alphasel import analyze

    model = tiny_llama(layers=4, **ANALYSIS_LLAMA)
    table = analyze(model, progress=False)
    expected = sum(module.weight.numel() for module in model.modules()
                   if getattr(module, "weight", None) is not None and module.weight.ndim == 2)
    assert table.attrs["alphasel"]["total_matrix_params"] == expected
    save_analysis(table, "tiny-llama")
    assert alphasel.cli.main(["plan", "--scheme", "blora", "--k", "1"]) == 0
    [path] = plan_files(runs)
    data = json.loads(path.read_text())
    assert data["total_params"] == expected
    assert data["trainable_share"] == pytest.approx(data["trainable_params"] / expected)
    assert "of the model" in capsys.readouterr().out
