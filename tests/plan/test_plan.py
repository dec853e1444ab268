"""InjectionPlan: JSON round trip, provenance, LoraConfig and verified injection with PEFT."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from helpers import ANALYSIS_LLAMA, alpha_table, name, tiny_llama

import alphasel
from alphasel.errors import PlanError
from alphasel.plan import SCHEMA_VERSION, InjectionPlan, PlannedModule, adapted_modules
from alphasel.planner import make_plan
from alphasel.table import read_table, write_table


@pytest.fixture(scope="module")
def table():
    return alpha_table(tiny_llama(layers=4, **ANALYSIS_LLAMA))


def module(block: int, kind: str, rank: int, rows: int = 32, cols: int = 32) -> PlannedModule:
    return PlannedModule(name=name(block, kind), block=block, kind=kind, rows=rows, cols=cols,
                         rank=rank, lora_alpha=rank, alpha=None, selection_alpha=None)


# -- files -----------------------------------------------------------------------------------


def test_json_round_trip_keeps_every_field(table, tmp_path):
    plan = make_plan(table, "alora", k=5, rank_alloc="alpha", budget=2000)
    path = plan.save(tmp_path / "sub" / "plan.json")
    assert InjectionPlan.load(path) == plan
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["trainable_params"] == plan.trainable_params
    assert [m["name"] for m in data["modules"]] == plan.module_names
    assert {"rank", "lora_alpha", "alpha"} <= set(data["modules"][0])
    assert not list(tmp_path.glob("sub/.*tmp"))


def test_unknown_schema_version_is_rejected(table):
    data = make_plan(table, "first", k=1).to_dict()
    data["schema_version"] = 99
    with pytest.raises(PlanError, match="schema_version 99.*reads version 1"):
        InjectionPlan.from_dict(data)


def test_unknown_field_and_bad_json_are_rejected(table):
    data = make_plan(table, "first", k=1).to_dict()
    with pytest.raises(PlanError, match="unknown field.*colour"):
        InjectionPlan.from_dict({**data, "colour": "red"})
    with pytest.raises(PlanError, match="not valid JSON"):
        InjectionPlan.from_json("{nope")


def test_a_plan_file_whose_method_and_ranks_disagree_is_rejected(table):
    data = make_plan(table, "blora", k=1, method="unfreeze").to_dict()
    assert InjectionPlan.from_dict(dict(data)).trainable_params == 9216
    with pytest.raises(PlanError, match="this lora plan's modules disagree"):
        InjectionPlan.from_dict({**data, "method": "lora"})  # ranks None, as an unfreeze plan's
    with pytest.raises(PlanError, match="method 'qlora', not one of lora, dora"):
        InjectionPlan.from_dict({**data, "method": "qlora"})
    older = make_plan(table, "blora", k=1).to_dict()
    del older["method"]  # written before plans had a method: a LoRA plan
    assert InjectionPlan.from_dict(older).method == "lora"


def test_nan_alpha_is_written_as_null(table):
    holed = table.copy()
    holed.loc[holed["name"] == name(0, "q"), "alpha"] = float("nan")
    plan = make_plan(holed, "first", k=1)
    assert json.loads(plan.to_json())["modules"][0]["alpha"] is None


def test_provenance_records_analysis_hash_model_and_version(table, tmp_path):
    path = write_table(table, tmp_path / "alpha.csv")
    (tmp_path / "meta.json").write_text(json.dumps(
        {"table": "alpha.csv", "model_id": "tiny-llama", "revision": "abc",
         "total_matrix_params": 100_000}))
    plan = make_plan(read_table(path), "blora", k=1)
    assert plan.analysis_path == str(path)
    assert plan.analysis_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (plan.model_id, plan.revision) == ("tiny-llama", "abc")
    assert plan.alphasel_version == alphasel.__version__ and plan.created
    assert plan.trainable_share == pytest.approx(plan.trainable_params / 100_000)


def test_share_falls_back_to_analysed_matrices(table):
    plan = make_plan(table, "first", k=1)
    analysed = int((table["rows"] * table["cols"]).sum())
    assert plan.trainable_share is None and plan.analysed_params == analysed
    assert plan.share_of_analysed_params == pytest.approx(plan.trainable_params / analysed)


# -- PEFT ------------------------------------------------------------------------------------


def test_lora_config_targets_full_names_with_escaped_patterns():
    plan = InjectionPlan(modules=[module(1, "q", 2), module(10, "q", 8), module(11, "q", 8)],
                         scheme="alora", k=3, unit="matrix", kinds=["q"])
    config = plan.to_lora_config(lora_dropout=0.1)
    assert set(config.target_modules) == set(plan.module_names)
    assert config.r == 8 and config.lora_dropout == 0.1
    assert config.rank_pattern == {re.escape(name(1, "q")): 2}
    with pytest.raises(PlanError, match="cannot override target_modules"):
        plan.to_lora_config(target_modules=["q_proj"])


def test_apply_adapts_exactly_the_plan_modules(table):
    plan = make_plan(table, "blora", k=2)
    peft_model = plan.apply(tiny_llama(layers=4, **ANALYSIS_LLAMA))
    layers = adapted_modules(peft_model)
    assert set(layers) == set(plan.module_names)
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == \
        plan.trainable_params


def test_apply_sets_allocated_ranks_per_module(table):
    plan = make_plan(table, "alora", k=6, rank_alloc="alpha", budget=3000, lora_alpha=16)
    layers = adapted_modules(plan.apply(tiny_llama(layers=4, **ANALYSIS_LLAMA)))
    assert {n: layer.r["default"] for n, layer in layers.items()} == {
        m.name: m.rank for m in plan.modules}
    assert {layer.lora_alpha["default"] for layer in layers.values()} == {16}


def test_layer_1_never_catches_layer_11():
    model = tiny_llama(layers=12, **ANALYSIS_LLAMA)
    plan = InjectionPlan(modules=[module(1, "q", 2), module(11, "q", 8), module(10, "q", 8)],
                         scheme="alora", k=3, unit="matrix", kinds=["q"])
    layers = adapted_modules(plan.apply(model))
    assert set(layers) == {name(1, "q"), name(10, "q"), name(11, "q")}
    assert layers[name(1, "q")].r["default"] == 2
    assert layers[name(11, "q")].r["default"] == 8

    only_one = make_plan(alpha_table(tiny_llama(layers=12, **ANALYSIS_LLAMA),
                                     alphas={1: [9.0] + [1.5] * 6}), "alora", k=1)
    assert only_one.module_names == [name(1, "q")]
    layers = adapted_modules(only_one.apply(tiny_llama(layers=12, **ANALYSIS_LLAMA)))
    assert set(layers) == {name(1, "q")}


def test_apply_raises_when_peft_adapts_something_else(table, monkeypatch):
    plan = make_plan(table, "alora", k=1)
    original = InjectionPlan.to_lora_config

    def suffix_only(self, **overrides):
        config = original(self, **overrides)
        config.target_modules = {"k_proj"}  # what a suffix target would do: every block's k
        return config

    monkeypatch.setattr(InjectionPlan, "to_lora_config", suffix_only)
    with pytest.raises(PlanError, match="adapted modules not in the plan: model.layers.0"):
        plan.apply(tiny_llama(layers=4, **ANALYSIS_LLAMA))


def test_apply_to_a_model_that_lacks_the_modules_raises(table):
    big = alpha_table(tiny_llama(layers=6, **ANALYSIS_LLAMA), alphas={5: [9.0] * 7})
    plan = make_plan(big, "blora", k=1)
    with pytest.raises(PlanError, match="lacks 7 of the plan's 7 module"):
        plan.apply(tiny_llama(layers=4, **ANALYSIS_LLAMA))


def test_apply_raises_on_shape_mismatch(table):
    plan = make_plan(table, "first", k=1, kinds="q")
    plan.modules[0].rows = 64  # as if the analysis had measured a wider model
    with pytest.raises(PlanError, match="LoRA parameters, planned"):
        plan.apply(tiny_llama(layers=4, **ANALYSIS_LLAMA))
