"""The trainer on the packaged real models (SmolLM2 GGUF, MiniLM safetensors): a few steps of
the built-in data sets, end to end through the CLI's inline plan."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import alphasel
import alphasel.cli
from alphasel.training import RunRecord

pytestmark = pytest.mark.integration


def test_smollm2_blora_instruction_tuning(tmp_path, capsys, runs):
    out = tmp_path / "smollm2"
    status = alphasel.cli.main([
        "train", "--model", "smollm2", "--scheme", "blora", "--k", "1", "--data",
        "stdlib-instruct", "--max-steps", "2", "--max-samples", "16", "--max-seq-len", "256",
        "--batch-size", "2", "--max-new-tokens", "8", "--out", str(out), "--quiet"])
    assert status == 0, capsys.readouterr().err
    record = RunRecord.load(out)
    assert record.complete and record.config["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert record.config["model_format"] == "gguf" and record.config["data_kind"] == "instruction"
    # SmolLM2's 30 blocks: BLoRA k=1 adapts all 7 projections of one block at rank 8.
    assert len(record.plan.modules) == 7 and len({m.block for m in record.plan.modules}) == 1
    assert record.summary["trainable_params"] == record.plan.trainable_params
    assert record.summary["total_params"] > 134_000_000
    assert 0 < record.summary["eval_loss"] < 10
    generations = record.generations()
    assert [row["when"] for row in generations].count("before") == len(generations) // 2
    assert all("### Instruction:" in row["prompt"] for row in generations)
    assert (out / "analysis.csv").is_file()
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(record.plan.module_names)
    # The saved adapter over the packaged GGUF (read by alphasel's own GGUF reader) gives the
    # alpha the run measured on transformers' model at its end: the same W + ΔW, rows in the
    # same order (llama.cpp's q/k permutation undone).
    history = pd.read_csv(out / "alpha_history.csv")
    last = history[history["step"] == history["step"].max()].set_index("name")["alpha"]
    table = alphasel.analyze("smollm2", adapter=out / "adapter", progress=False)
    analysed = table.set_index("name").loc[last.index, "alpha"]
    assert ((analysed - last).abs() / last).max() < 1e-9


def test_minilm_classifies_stdlib_topics(tmp_path, capsys, runs):
    out = tmp_path / "minilm"
    status = alphasel.cli.main([
        "train", "--model", "minilm", "--task", "classification", "--data", "stdlib-topics",
        "--scheme", "blora", "--k", "2", "--max-steps", "3", "--max-samples", "64",
        "--max-seq-len", "64", "--batch-size", "8", "--out", str(out), "--quiet"])
    assert status == 0, capsys.readouterr().err
    record = RunRecord.load(out)
    assert len(record.config["labels"]) >= 5
    assert 0.0 <= record.summary["eval_accuracy"] <= 1.0
    assert {m.block for m in record.plan.modules} <= set(range(6))
    assert not (out / "generations.jsonl").exists()
