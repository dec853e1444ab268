"""--method unfreeze: the plan's matrices (and their biases) train in full, everything else stays
the base's to the bit; the record keeps only the changed tensors and rebuilds the model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers import FAST, alpha_table, byte_tokenizer, code_data, tiny_bert, tiny_llama, topic_data
from safetensors.torch import load_file
from transformers import TrainerCallback

from alphasel.analyzer import analyze_matrix
from alphasel.errors import TrainConfigError
from alphasel.layout import block_of, kind_of
from alphasel.planner import make_plan
from alphasel.training import TrainConfig, train, trained_model
from alphasel.training.adapters import UNFROZEN_FILE


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
    (dict(method="unfreeze", reselect=True), "--method unfreeze is not built yet"),
    (dict(method="unfreeze", lora_init="gaussian"), "--lora-init applies to adapters"),
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
