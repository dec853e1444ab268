"""Memory by component: each figure of summary.json's memory_breakdown against what it must be
for a tiny model (weights, gradients and Adam's state follow from the parameter counts;
activations shrink under gradient checkpointing), and where it shows."""

from __future__ import annotations

import pytest
from helpers import FAST, alpha_table, byte_tokenizer, code_data, tiny_llama

from alphasel.cli.runs import format_runs
from alphasel.planner import make_plan
from alphasel.training import TrainConfig, list_runs, train
from alphasel.training.record import COMPONENTS

MB = 2**20


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(LoRA, LoRA with gradient checkpointing, full fine-tuning), two steps each."""
    root = tmp_path_factory.mktemp("memory")
    tokenizer = byte_tokenizer()
    plan = make_plan(alpha_table(tiny_llama()), "blora", 1)
    made = []
    for name, method, checkpointing in (("lora", "lora", False), ("lora-gc", "lora", True),
                                        ("full", "full", False)):
        made.append(train(tiny_llama(), plan if method == "lora" else None,
                          code_data(tokenizer),
                          TrainConfig(method=method, max_steps=2, generate=False,
                                      grad_checkpointing=checkpointing, **FAST),
                          tokenizer=tokenizer, out=root / name, progress=False))
    return made


def test_weights_gradients_and_optimizer_state_follow_the_parameters(runs):
    for record in runs:
        memory, summary = record.summary["memory_breakdown"], record.summary
        trainable, total = summary["trainable_params"], summary["total_params"]
        assert memory["trainable_weights_mb"] == pytest.approx(4 * trainable / MB, abs=1e-4)
        assert memory["frozen_weights_mb"] == pytest.approx(4 * (total - trainable) / MB,
                                                            abs=1e-4)
        assert memory["gradients_mb"] == memory["trainable_weights_mb"]
        # AdamW: two float32 moments per trained parameter, and a step count per tensor.
        assert 2 * memory["trainable_weights_mb"] <= memory["optimizer_state_mb"] \
            <= 2 * memory["trainable_weights_mb"] + 1e-3
        assert memory["inputs_mb"] > 0 and memory["peak_mb"] == summary["peak_memory_mb"]


def test_activations_are_measured_not_estimated(runs):
    lora, checkpointed, full = (record.summary["memory_breakdown"] for record in runs)
    assert checkpointed["activations_mb"] < lora["activations_mb"]  # recomputed, not kept
    # Full fine-tuning also keeps what the weights' gradients need; LoRA with a frozen base
    # skips some of it.
    assert full["activations_mb"] > lora["activations_mb"] > 0
    assert lora["frozen_weights_mb"] > 0 == full["frozen_weights_mb"]


def test_the_runs_table_shows_the_components(runs):
    table = list_runs(runs[0].path.parent)
    assert set(COMPONENTS) <= set(table.columns)
    shown = format_runs(table)
    for header in ("frozen_mb", "trained_mb", "grads_mb", "optim_mb", "activ_mb", "inputs_mb"):
        assert header in shown
