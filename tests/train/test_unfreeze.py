"""--method unfreeze: the plan's matrices (and their biases) train in full, everything else stays
the base's to the bit; the record keeps only the changed tensors and rebuilds the model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import FAST, alpha_table, byte_tokenizer, code_data, tiny_bert, tiny_llama, topic_data
from safetensors.torch import load_file
from transformers import TrainerCallback

from alphasel.analyzer import analyze_matrix
from alphasel.errors import PlanError, TrainConfigError
from alphasel.layout import block_of, kind_of
from alphasel.planner import make_plan
from alphasel.training import TrainConfig, train, trained_model
from alphasel.training.adapters import UNFROZEN_FILE, part_parameters
from alphasel.training.reselect import selection_seed


class _KeepModel(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.state = {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def unfrozen(tmp_path_factory):
    """A BLoRA k=1 plan (block 3's seven matrices) trained in full for three steps."""
    tokenizer = byte_tokenizer()
    plan = make_plan(alpha_table(tiny_llama()), "blora", 1)
    keep = _KeepModel()
    record = train(tiny_llama(), plan, code_data(tokenizer),
                   TrainConfig(method="unfreeze", max_steps=3, lr=1e-2, generate=False,
                               **FAST),
                   tokenizer=tokenizer, out=tmp_path_factory.mktemp("unfreeze") / "run",
                   progress=False, callbacks=[keep])
    return plan, record, keep.state


def test_only_the_plans_matrices_train_and_count_exactly(unfrozen):
    plan, record, _ = unfrozen
    assert record.summary["trainable_params"] == sum(m.rows * m.cols for m in plan.modules)
    assert record.config["method"] == "unfreeze" and record.config["config"]["lr"] == 1e-2
    memory = record.summary["memory_breakdown"]
    # The optimizer holds state for the unfrozen matrices only: Adam's two moments of each.
    assert memory["optimizer_state_mb"] == pytest.approx(2 * memory["trainable_weights_mb"],
                                                         abs=1e-3)


def test_the_record_keeps_only_the_changed_tensors_and_rebuilds_the_model(unfrozen):
    plan, record, trained = unfrozen
    saved = load_file(str(record.path / "adapter" / UNFROZEN_FILE))
    assert sorted(saved) == sorted(f"{m.name}.weight" for m in plan.modules)
    assert [p.name for p in (record.path / "adapter").iterdir()] == [UNFROZEN_FILE]
    base = tiny_llama()
    untouched = {key: value.clone() for key, value in base.state_dict().items()}
    rebuilt = trained_model(base, record.path).state_dict()
    for key, value in rebuilt.items():
        assert torch.equal(value, trained[key]), key  # the trained model, bit for bit
        if key in saved:
            assert not torch.equal(value, untouched[key]), key  # trained
        else:
            assert torch.equal(value, untouched[key]), key  # the base's own


def test_alpha_history_measures_the_unfrozen_weight_itself(unfrozen):
    plan, record, trained = unfrozen
    history = pd.read_csv(record.path / "alpha_history.csv")
    assert sorted(history["step"].unique()) == [0, 3]
    last = history[history["step"] == 3].set_index("name")
    name = plan.modules[0].name
    expected = analyze_matrix(trained[f"{name}.weight"].numpy(), name, "ks")
    assert last.loc[name, "alpha"] == pytest.approx(expected["alpha"], rel=1e-9)


def test_biases_of_the_plans_matrices_train_too(tmp_path):
    """MiniLM-like layers carry biases: a plan's matrix trains with its bias."""
    tokenizer = byte_tokenizer()
    model = tiny_bert(num_labels=2)
    table = alpha_table(model)
    table["kind"] = [kind_of(name) for name in table["name"]]  # BERT's names (query, key, ...)
    table["block"] = pd.array([block_of(name) for name in table["name"]], dtype="Int64")
    plan = make_plan(table, "alora", 2, kinds="attn")
    record = train(model, plan, topic_data(tokenizer),
                   TrainConfig(task="classification", method="unfreeze", max_steps=1,
                               generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    # The classifier's new head trains as well, beside the two matrices and their biases.
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))
    matrices = sum(m.rows * m.cols + m.rows for m in plan.modules)
    assert head > 0 and record.summary["trainable_params"] == matrices + head


@pytest.mark.parametrize("options, message", [
    (dict(method="unfreeze", quantize="4bit"), "4-bit weights cannot be trained in full"),
    (dict(method="unfreeze", lora_init="gaussian"), "--lora-init applies to adapters"),
    (dict(method="lora", also="embed"), "it contradicts --method lora: use --method unfreeze"),
    (dict(method="unfreeze", also="embed,heads"), "--also heads: name parts among embed, "),
    (dict(method="unfreeze", also="norm,norm"), "names a part twice"),
])
def test_contradicting_options_are_refused(options, message):
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig(**options)


def test_unfreeze_needs_a_plan(tmp_path):
    tokenizer = byte_tokenizer()
    with pytest.raises(TrainConfigError, match="--method unfreeze needs a plan"):
        train(tiny_llama(), None, code_data(tokenizer), TrainConfig(method="unfreeze"),
              tokenizer=tokenizer, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _selections(record) -> list[dict]:
    return [json.loads(line) for line in
            (record.path / "selections.jsonl").read_text().splitlines()]


def test_reselection_unfreezes_the_new_choice_and_keeps_the_dropped_ones_trained(tmp_path):
    """--reselect-every 1 with random blocks: each round trains one step on its own matrices;
    a matrix first chosen in a later round trains (the rebuilt optimizer holds it), a dropped
    one keeps its trained values, and the rebuilt model is the trained one."""
    tokenizer = byte_tokenizer()
    plan = make_plan(alpha_table(tiny_llama(layers=4)), "random", 1, unit="block", seed=3,
                     method="unfreeze")
    keep = _KeepModel()
    record = train(tiny_llama(layers=4), plan, code_data(tokenizer),
                   TrainConfig(method="unfreeze", max_steps=3, reselect_every=1, lr=1e-2,
                               generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False, callbacks=[keep])
    rounds = _selections(record)
    assert [row["seed"] for row in rounds] == [3, selection_seed(3, 2), selection_seed(3, 3)]
    chosen = [set(row["modules"]) for row in rounds]
    assert len({frozenset(modules) for modules in chosen}) > 1  # the draws differ
    assert all(row["trainable_params"] == row["budget"] for row in rounds)  # blocks are alike
    base = {key: value.clone() for key, value in tiny_llama(layers=4).state_dict().items()}
    ever = set().union(*chosen)
    for name in ever:  # every round's matrices moved, the later rounds' first choices too
        assert not torch.equal(keep.state[f"{name}.weight"], base[f"{name}.weight"]), name
    saved = load_file(str(record.path / "adapter" / UNFROZEN_FILE))
    assert set(saved) == {f"{name}.weight" for name in ever}
    rebuilt = trained_model(tiny_llama(layers=4), record.path).state_dict()
    for key, value in rebuilt.items():
        assert torch.equal(value, keep.state[key]), key
        if key not in saved:
            assert torch.equal(value, base[key]), key
    assert record.summary["rounds"] == 3
    assert record.summary["trainable_params"] == rounds[-1]["trainable_params"]


def test_also_trains_the_named_parts_and_counts_them(tmp_path):
    tokenizer = byte_tokenizer()
    model = tiny_llama()
    plan = make_plan(alpha_table(model), "alora", 2, method="unfreeze")
    parts = part_parameters(model)
    # The tiny Llama ties no weights: its embedding, head and every RMSNorm are parts.
    assert set(parts["embed"]) == {"model.embed_tokens.weight"}
    assert set(parts["head"]) == {"lm_head.weight"}
    assert len(parts["norm"]) == 2 * 2 + 1
    record = train(model, plan, code_data(tokenizer),
                   TrainConfig(method="unfreeze", also="embed,head,norm", max_steps=1,
                               generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    extra = sum(p.numel() for part in parts.values() for p in part.values())
    assert record.summary["trainable_params"] == plan.trainable_params + extra
    assert record.summary["also_params"] == extra
    saved = load_file(str(record.path / "adapter" / UNFROZEN_FILE))
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(saved)


def test_also_naming_a_part_the_model_lacks_is_refused(tmp_path):
    """A GPT-2-free example: a bare module with no normalisation layers."""
    tokenizer = byte_tokenizer()
    model = tiny_llama()
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("Norm"):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    torch.nn.Identity())
    plan = make_plan(alpha_table(tiny_llama()), "alora", 2, method="unfreeze")
    with pytest.raises(TrainConfigError, match=r"--also norm: the model has no such part \(it "
                       r"has embed, head\)"):
        train(model, plan, code_data(tokenizer),
              TrainConfig(method="unfreeze", also="norm", max_steps=1, generate=False, **FAST),
              tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_lora_plan_trains_as_unfreeze_unless_its_budget_is_in_lora_parameters():
    table = alpha_table(tiny_llama())
    lora = make_plan(table, "blora", 1)
    unfrozen = lora.trained_as("unfreeze")
    assert unfrozen.module_names == lora.module_names and unfrozen.unfreezes
    assert unfrozen.trainable_params == sum(m.rows * m.cols for m in lora.modules)
    assert lora.trained_as("dora") is lora
    matched = make_plan(table, "alora", budget=lora.trainable_params)
    with pytest.raises(PlanError, match="matched to a budget of .* LoRA parameters"):
        matched.trained_as("unfreeze")
    with pytest.raises(PlanError, match="has no ranks for --method lora"):
        unfrozen.trained_as("lora")
