"""Re-selection (--reselect, --reselect-every): folding equals PEFT's merge, the fresh adapters
train, the learning rate continues the schedule, the budget holds, and the record says which
modules were adapted when."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from helpers import FAST, adapted_model, code_data, tiny_llama
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

import alphasel
from alphasel.errors import PlanError, RunError, TrainConfigError
from alphasel.planner import make_plan
from alphasel.training import TrainConfig, train
from alphasel.training.reselect import (
    candidate_table,
    fold_adapters,
    replan,
    selection_seed,
    trained_model,
)


def _selections(record) -> list[dict]:
    return [json.loads(line) for line in
            (record.path / "selections.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_folding_equals_merge_and_unload(arch, variant):
    peft_model, layers = adapted_model(arch, variant, trained=True)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    folded = fold_adapters(peft_model)
    assert not any(isinstance(module, LoraLayer) for module in folded.modules())
    expected = dict(merged.named_parameters())
    for name, parameter in folded.named_parameters():
        torch.testing.assert_close(parameter, expected[name], atol=1e-5, rtol=0)
    assert len(layers) > 0


def test_epoch_reselection_records_rounds_and_rebuilds_the_trained_model(tmp_path, tokenizer):
    model = tiny_llama(layers=4)
    base = copy.deepcopy(model)
    table = alphasel.analyze(model, progress=False)
    plan = make_plan(table, "blora", 1)
    config = dict(epochs=3, lr=1e-2, generate=False, **FAST)
    record = train(model, plan, code_data(tokenizer), TrainConfig(reselect=True, **config),
                   tokenizer=tokenizer, out=tmp_path / "run", analysis=table, progress=False)
    rounds = _selections(record)
    assert [row["round"] for row in rounds] == [1, 2, 3]
    assert [row["epoch"] for row in rounds] == [1, 2, 3]
    assert [row["step"] for row in rounds] == [0, 6, 12]  # 24 chunks / 4 per step
    assert rounds[0]["modules"] == plan.module_names
    # A block scheme at one rank costs the same in every block: the budget holds exactly.
    assert {row["trainable_params"] for row in rounds} == {plan.trainable_params}
    assert record.summary["rounds"] == 3 and record.summary["reselect_seconds"] > 0

    # alpha_history covers every candidate; `adapted` follows the round trained in that epoch
    # (epoch 0: the initial plan).
    history = pd.read_csv(record.path / "alpha_history.csv")
    assert history.groupby("epoch")["name"].count().tolist() == [28] * 4
    for epoch, selection in zip([0, 1, 2, 3], [rounds[0], *rounds], strict=True):
        adapted = history[(history["epoch"] == epoch) & history["adapted"]]
        assert sorted(adapted["name"]) == sorted(selection["modules"])

    # Each re-plan is blora k=1 on the alpha measured at that epoch's end.
    for row in rounds[1:]:
        measured = history[history["step"] == row["step"]]
        blocks = measured.groupby("block")["alpha"].mean()
        assert {int(name.split(".")[2]) for name in row["modules"]} == {blocks.idxmax()}

    # The folded rounds and the last adapter rebuild the trained weights: their alpha is the
    # history's final row for every candidate.
    rebuilt = fold_adapters(trained_model(base, record.path))
    final = alphasel.analyze(rebuilt, progress=False).set_index("name")
    last = history[history["epoch"] == 3].set_index("name")
    pd.testing.assert_series_equal(last["alpha"], final.loc[last.index, "alpha"],
                                   check_names=False, rtol=1e-9)
    assert sorted(p.name for p in (record.path / "folded").iterdir()) == ["round-1", "round-2"]
    assert not (record.path / "checkpoints").exists()  # re-selection checkpoints are consumed

    # The learning rate continues the run's schedule across re-selections.
    plain = train(tiny_llama(layers=4), plan, code_data(tokenizer), TrainConfig(**config),
                  tokenizer=tokenizer, out=tmp_path / "plain", progress=False)
    lrs = record.metrics().dropna(subset=["loss"]).set_index("step")["lr"]
    plain_lrs = plain.metrics().dropna(subset=["loss"]).set_index("step")["lr"]
    pd.testing.assert_series_equal(lrs, plain_lrs)
    # The first epoch is the same run; after it the models differ.
    evals = record.metrics().dropna(subset=["eval_loss"]).set_index("step")["eval_loss"]
    plain_evals = plain.metrics().dropna(subset=["eval_loss"]).set_index("step")["eval_loss"]
    assert evals[6] == pytest.approx(plain_evals[6], rel=1e-6)
    assert evals[18] != pytest.approx(plain_evals[18], rel=1e-6)


def test_fresh_adapters_train_from_their_first_step(tmp_path, tokenizer):
    """--reselect-every 1: every round trains exactly one step, so a nonzero B (PEFT starts it
    at zero) in every round's adapter shows the optimizer saw the new parameters."""
    model = tiny_llama(layers=4)
    plan = make_plan(alphasel.analyze(model, progress=False), "random", 2, unit="block",
                     seed=3)
    record = train(model, plan, code_data(tokenizer),
                   TrainConfig(max_steps=3, reselect_every=1, lr=1e-2, generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    rounds = _selections(record)
    assert [row["step"] for row in rounds] == [0, 1, 2]
    assert [row["seed"] for row in rounds] == [3, selection_seed(3, 2), selection_seed(3, 3)]
    folders = [record.path / "folded" / "round-1", record.path / "folded" / "round-2",
               record.path / "adapter"]
    for folder, row in zip(folders, rounds, strict=True):
        weights = load_file(folder / "adapter_model.safetensors")
        b_weights = {key: value for key, value in weights.items() if "lora_B" in key}
        assert len(b_weights) == len(row["modules"])
        assert all(value.abs().max() > 0 for value in b_weights.values()), folder.name
        adapted = {key.split(".lora_B")[0].removeprefix("base_model.model.")
                   for key in b_weights}
        assert adapted == set(row["modules"])
    assert record.summary["global_step"] == 3


def test_replan_holds_the_budget_by_rechoosing_k():
    """alora by matrix: modules differ in size, so the same k can miss the budget; k is then
    re-chosen at the same rank to meet it within 5%."""
    names = [f"model.layers.{block}.{part}" for block in range(4)
             for part in ("self_attn.q_proj", "mlp.up_proj")]
    small = {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"}
    rows = [{"name": name, "block": int(name.split(".")[2]),
             "kind": "q" if "q_proj" in name else "up", "rows": 32 if "q_proj" in name else 96,
             "cols": 32, "alpha": 9.0 if name in small else 3.0} for name in names]
    table = pd.DataFrame(rows)
    first = make_plan(table.assign(alpha=[3.0 if name in small else 9.0 for name in names]),
                      "alora", 2)
    assert first.trainable_params == 2 * 8 * (96 + 32)  # two up_proj
    again = replan(first, table, 2, first.trainable_params)
    # Two q_proj (alpha 9) would train half the budget; the next unit by alpha (ties in model
    # order) is layer 0's up_proj, and k=3 meets it exactly.
    assert again.module_names == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj",
                                  "model.layers.1.self_attn.q_proj"]
    assert again.k == 3 and again.trainable_params == first.trainable_params
    assert any("round 2" in note for note in again.notes)
    assert {module.rank for module in again.modules} == {8}


def test_random_by_matrix_redraws_to_hold_the_budget_in_every_round():
    """Matrices of 384, 512 and 768 LoRA parameters (rank 8): a fixed k would drift with each
    draw, so every round's draw fills the budget instead, and a budget no draw can meet is
    an error naming the closest."""
    table = alphasel.analyze(tiny_llama(layers=4), progress=False)
    plan = make_plan(table, "random", 2, seed=5)
    budget = plan.trainable_params
    sizes = set()
    for round_ in range(2, 12):
        again = replan(plan, table, round_, budget)
        assert abs(again.trainable_params - budget) <= 0.05 * budget, round_
        sizes.add(again.k)
    assert len(sizes) > 1  # the k that fills the budget differs from draw to draw
    with pytest.raises(PlanError, match=r"round 2: no choice of random holds the budget of 100 "
                                        r".*the closest is k=1 at rank 8 with 384"):
        replan(plan, table, 2, 100)


def test_candidate_table_reads_shapes_and_random_rounds_differ(tokenizer):
    model = tiny_llama(layers=4)
    table = alphasel.analyze(model, progress=False)
    plan = make_plan(table, "random", 2, seed=5)
    rows = table[["name", "block", "kind", "alpha"]].to_dict("records")
    rows = [row for row in rows if row["kind"] in plan.kinds]
    rebuilt = candidate_table(rows, model, plan)
    expected = table.set_index("name").loc[rebuilt["name"], ["rows", "cols"]]
    assert rebuilt[["rows", "cols"]].to_numpy().tolist() == expected.to_numpy().tolist()
    draws = [replan(plan, rebuilt, round_, plan.trainable_params).module_names
             for round_ in (2, 3, 4)]
    assert len({tuple(draw) for draw in draws}) > 1
    assert replan(plan, rebuilt, 2, plan.trainable_params).module_names == draws[0]


@pytest.mark.parametrize("options, message", [
    (dict(method="full"), "--method full"),
    (dict(remeasure="none"), "--remeasure none"),
    (dict(save_every=2), "--save-every"),
    (dict(reselect_every=0), "--reselect-every 0"),
])
def test_reselect_contradictions_name_their_flags(options, message):
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig(reselect=True, **options)


def test_reselect_with_4bit_is_refused():
    with pytest.raises(TrainConfigError, match="--quantize 4bit"):
        TrainConfig(reselect_every=5, quantize="4bit")


def test_a_reselecting_run_is_not_resumed(tmp_path, tokenizer):
    with pytest.raises(RunError, match="cannot be resumed"):
        train(tiny_llama(), make_plan(alphasel.analyze(tiny_llama(), progress=False),
                                          "blora", 1), code_data(tokenizer),
              TrainConfig(reselect=True, **FAST), tokenizer=tokenizer, resume=tmp_path)
