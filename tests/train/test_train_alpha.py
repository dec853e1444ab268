"""Alpha across training: alpha_history.csv from the adapters' effective weights, the epoch-0
invariant (B starts at zero, so epoch-0 alpha is the analysis alpha), and --remeasure."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import FAST, code_data, tiny_llama

import alphasel
from alphasel.planner import make_plan
from alphasel.training import TrainConfig, train


def _history(record) -> pd.DataFrame:
    return pd.read_csv(record.path / "alpha_history.csv")


def test_epoch_zero_alpha_is_the_analysis_alpha_and_epochs_follow(tmp_path, tokenizer):
    model = tiny_llama()
    table = alphasel.analyze(model, progress=False)
    plan = make_plan(table, "blora", 1)
    record = train(model, plan, code_data(tokenizer),
                   TrainConfig(epochs=2, lr=1e-2, generate=False, **FAST), tokenizer=tokenizer,
                   out=tmp_path / "run", analysis=table, progress=False)
    history = _history(record)
    assert list(history.columns) == ["epoch", "step", "name", "block", "kind", "alpha", "xmin",
                                     "D", "num_pl_spikes", "adapted"]
    assert sorted(history["epoch"].unique()) == [0, 1, 2]
    assert history.groupby("epoch")["step"].first().tolist() == [0, 6, 12]  # 24 chunks / 4
    first = history[history["epoch"] == 0].set_index("name")
    assert sorted(first.index) == sorted(plan.module_names) and first["adapted"].all()
    analysed = table.set_index("name").loc[first.index]
    pd.testing.assert_series_equal(first["alpha"], analysed["alpha"], check_names=False,
                                   rtol=1e-12)
    last = history[history["epoch"] == 2].set_index("name")
    assert (last["alpha"] - first["alpha"]).abs().max() > 0  # training moved W + ΔW
    metrics = record.metrics()
    timed = metrics[metrics["alpha_seconds"].notna()] if "alpha_seconds" in metrics else []
    assert len(timed) == 3 and timed["step"].tolist() == [0, 6, 12]
    assert record.summary["alpha_seconds"] == pytest.approx(timed["alpha_seconds"].sum(),
                                                            abs=5e-3)


@pytest.mark.parametrize("remeasure, rows", [("candidates", 14), ("none", 0)])
def test_remeasure_candidates_and_none(tmp_path, tokenizer, remeasure, rows):
    model = tiny_llama()
    plan = make_plan(alphasel.analyze(model, progress=False), "blora", 1)
    record = train(model, plan, code_data(tokenizer),
                   TrainConfig(max_steps=2, remeasure=remeasure, generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    if rows == 0:
        assert not (record.path / "alpha_history.csv").exists()
        assert record.summary["alpha_seconds"] == 0
        return
    first = _history(record).query("epoch == 0")
    assert len(first) == rows  # 2 blocks × 7 projections
    assert set(first.loc[first["adapted"], "name"]) == set(plan.module_names)
    assert (~first["adapted"]).sum() == rows - len(plan.modules)


def test_full_fine_tuning_measures_every_candidate_and_alpha_every(tmp_path, tokenizer):
    record = train(tiny_llama(), None, code_data(tokenizer),
                   TrainConfig(method="full", max_steps=4, alpha_every=2, generate=False,
                               **FAST), tokenizer=tokenizer, out=tmp_path / "run",
                   progress=False)
    history = _history(record)
    assert history["adapted"].all() and history["name"].nunique() == 14
    assert sorted(history["step"].unique()) == [0, 2, 4]
