"""Evaluation beyond the eval loss: hub data sets by config and split (laid out locally and in
the hub cache as the hub lays them out), the task's own metrics against cases computed by hand,
eval_predictions.jsonl, perplexity and token accuracy, and lm-evaluation-harness with the
offline stdlib-mc task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from helpers import FAST, alpha_table, byte_tokenizer, code_data, tiny_bert, tiny_llama

from alphasel.errors import DataError, TrainConfigError
from alphasel.planner import make_plan
from alphasel.training import TrainConfig, train
from alphasel.training import harness as harness_module
from alphasel.training.data import load_data
from alphasel.training.splits import assign_sides
from alphasel.training.stdlib_data import stdlib_files
from alphasel.training.stdlib_mc import CHOICES, questions
from alphasel.training.task_metrics import (
    classification_metrics,
    headline_metric,
    higher_is_better,
    regression_metrics,
)

# ---- data sets laid out as the hub lays them out ------------------------------------------------

GLUE_README = """---
configs:
- config_name: cola
  data_files:
  - split: train
    path: cola/train-*
  - split: validation
    path: cola/validation-*
  - split: test
    path: cola/test-*
- config_name: mrpc
  data_files:
  - split: train
    path: mrpc/train-*
  - split: validation
    path: mrpc/validation-*
- config_name: stsb
  data_files:
  - split: train
    path: stsb/train-*
  - split: validation
    path: stsb/validation-*
---
"""


def write_glue(root: Path) -> Path:
    """A GLUE-shaped data set: README.md with its configs, a parquet file per config and
    split, ClassLabel features for CoLA and MRPC, float scores for STS-B."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(GLUE_README)
    cola = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                              "label": datasets.ClassLabel(names=["unacceptable", "acceptable"])})
    mrpc = datasets.Features({"sentence1": datasets.Value("string"),
                              "sentence2": datasets.Value("string"),
                              "label": datasets.ClassLabel(names=["not_equivalent",
                                                                  "equivalent"])})
    stsb = datasets.Features({"sentence1": datasets.Value("string"),
                              "sentence2": datasets.Value("string"),
                              "label": datasets.Value("float32")})
    for split, size in (("train", 48), ("validation", 12)):
        tables = {
            "cola": (cola, {"sentence": [f"the {split} cat {i} sat {'on' * (i % 2)}"
                                         for i in range(size)],
                            "idx": list(range(size)), "label": [i % 2 for i in range(size)]}),
            "mrpc": (mrpc, {"sentence1": [f"x {i} {split}" for i in range(size)],
                            "sentence2": [f"y {i % 7} {split}" for i in range(size)],
                            "label": [int(i % 7 == 0) for i in range(size)]}),
            "stsb": (stsb, {"sentence1": [f"a {i} {split}" for i in range(size)],
                            "sentence2": [f"b {i} {split}" for i in range(size)],
                            "label": [float(i % 6) for i in range(size)]})}
        for config, (features, columns) in tables.items():
            (root / config).mkdir(exist_ok=True)
            datasets.Dataset.from_dict(columns, features=features).to_parquet(
                str(root / config / f"{split}-00000-of-00001.parquet"))
    # GLUE's test splits hold no labels: -1 in every row.
    datasets.Dataset.from_dict({"sentence": [f"the test cat {i}" for i in range(6)],
                                "idx": list(range(6)), "label": [-1] * 6},
                               features=cola).to_parquet(
        str(root / "cola" / "test-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_glue(tmp_path_factory.mktemp("data") / "glue")


def test_a_config_and_its_own_splits_with_class_names_from_the_features(glue, tokenizer):
    data = load_data(f"{glue}:cola", tokenizer, task="classification", eval_split="validation",
                     text_column=["sentence"])
    assert data.labels == ["unacceptable", "acceptable"]  # from the ClassLabel, not sorted
    assert (len(data.train), len(data.eval)) == (48, 12)
    assert data.details["split"] == "by the data set's splits"
    assert data.details["config"] == "cola" and data.details["eval_split"] == "validation"


def test_sentence_pairs_are_encoded_as_pairs(glue):
    from transformers import BertTokenizerFast

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "x", "y", "train", "validation",
                  *map(str, range(48))]
    folder = glue.parent / "vocab"
    folder.mkdir(exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    bert = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    data = load_data(f"{glue}:mrpc", bert, task="classification", eval_split="validation",
                     text_column="sentence1,sentence2".split(","))
    row = data.eval[0]
    # [CLS] first [SEP] second [SEP], the second sentence's token type 1.
    assert row["input_ids"].count(bert.sep_token_id) == 2
    assert row["token_type_ids"][-1] == 1 and row["token_type_ids"][1] == 0
    assert "sentence pairs" in data.description


@pytest.mark.parametrize("spec, options, message", [
    (":qnli", {}, r"has no config 'qnli' \(it has: cola, mrpc, stsb\): name one"),
    (":cola", {"eval_split": "dev"},
     r"has no split 'dev' \(it has: train, validation, test\): choose one with --eval-split"),
    (":cola", {"eval_split": "test", "text_column": ["sentence"]},
     r"labels \[-1\] are not ids of its classes 0-1 \(unacceptable, acceptable\): a split "
     r"without labels \(GLUE's test\) cannot be evaluated; name one with labels"),
    (":cola", {"train_split": "dev"}, r"has no split 'dev' .*--train-split"),
    (":cola", {"text_column": ["text"]},
     r"has no column\(s\) text \(it has: sentence, idx, label\): name its text with "
     r"--text-column"),
    (":cola", {"task": "regression", "text_column": ["sentence"]},
     r"--task regression needs numbers, but 'label' holds classes \(unacceptable, "),
    ("", {}, r"has several configs \(cola, mrpc, stsb\): name one, as .*:cola"),
])
def test_what_a_data_set_lacks_is_named_with_what_it_has(glue, tokenizer, spec, options,
                                                         message):
    with pytest.raises(DataError, match=message):
        load_data(f"{glue}{spec}", tokenizer, **{"task": "classification", **options})


def test_regression_labels_must_be_numbers(tmp_path, tokenizer):
    path = tmp_path / "scores.jsonl"
    path.write_text("".join(json.dumps({"text": f"t {i}", "label": "high"}) + "\n"
                            for i in range(6)))
    with pytest.raises(DataError, match=r"--task regression needs a number in 'label', not "
                                        r"'high': use --task classification"):
        load_data(str(path), tokenizer, task="regression")


def test_glue_by_its_short_name_from_the_hub_cache_offline(glue, tokenizer, tmp_path,
                                                          monkeypatch):
    """`glue:cola` is nyu-mll/glue's config cola; with the network off, a snapshot in the hub
    cache (laid out as huggingface_hub lays it out) is read; an id it lacks says so."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "datasets--nyu-mll--glue"
    write_glue(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    data = load_data("glue:stsb", tokenizer, task="regression", eval_split="validation",
                     text_column=["sentence1", "sentence2"])
    assert data.kind == "regression" and len(data.eval) == 12
    assert sorted(set(data.train["labels"])) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(DataError, match="neither a local file or directory nor a data set in "
                                        "the Hugging Face cache"):
        load_data("nyu-mll/superglue:boolq", tokenizer, task="classification")


# ---- the task's metrics, by hand ----------------------------------------------------------------


def test_classification_metrics_by_hand():
    # labels 0 0 1 1 1, predicted 0 1 1 1 0: TP 2, TN 1, FP 1, FN 1.
    logits = np.array([[2, 0], [0, 2], [0, 2], [0, 2], [2, 0]], dtype=float)
    metrics = classification_metrics(logits, np.array([0, 0, 1, 1, 1]))
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert metrics["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics["macro_f1"] == pytest.approx((2 * 1 / (2 * 1 + 1 + 1) + 4 / 6) / 2)
    three = classification_metrics(np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 2, 1]))
    assert "f1" not in three and three["accuracy"] == pytest.approx(0.75)


def test_regression_metrics_by_hand():
    scores, labels = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 5.0, 9.0])
    centred = scores - scores.mean(), labels - labels.mean()
    pearson = (centred[0] @ centred[1]) / math.sqrt((centred[0] @ centred[0])
                                                    * (centred[1] @ centred[1]))
    metrics = regression_metrics(scores, labels)
    assert metrics["pearson"] == pytest.approx(pearson)
    assert metrics["spearman"] == pytest.approx(1.0)  # the same order
    assert math.isnan(regression_metrics(np.ones(4), labels)["pearson"])


def test_glue_configs_lead_with_their_own_metric():
    assert headline_metric("classification", "cola") == "eval_mcc"
    assert headline_metric("classification", "mrpc") == "eval_f1"
    assert headline_metric("regression", "stsb") == "eval_spearman"
    assert headline_metric("classification", "sst2") == "eval_accuracy"
    assert headline_metric("causal") == "eval_loss"


@pytest.mark.parametrize("metric, higher", [
    ("eval_accuracy", True), ("eval_mcc", True), ("eval_spearman", True),
    ("eval_token_accuracy", True), ("eval_loss", False), ("best_eval_loss", False),
    ("eval_perplexity", False), ("harness_arc_easy_acc_norm", True),
    ("harness_stdlib-mc_acc", True), ("harness_stdlib-mc_acc_stderr", False),
    ("harness_wikitext_word_perplexity", False), ("harness_wikitext_bits_per_byte", False),
    ("harness_wmt16_ter", False), ("harness_wmt16_bleu", True)])
def test_which_way_each_metric_is_better(metric, higher):
    assert higher_is_better(metric) is higher


# ---- runs record their metrics and predictions --------------------------------------------------


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _bert_plan(model):
    from alphasel.layout import block_of, kind_of

    table = alpha_table(model)
    table["kind"] = [kind_of(name) for name in table["name"]]
    table["block"] = [block_of(name) for name in table["name"]]
    return make_plan(table, "blora", 1)


def test_a_classifier_records_its_metrics_and_every_prediction(glue, tmp_path):
    tokenizer = byte_tokenizer()
    model = tiny_bert(num_labels=2)
    record = train(model, _bert_plan(model), f"{glue}:cola",
                   TrainConfig(task="classification", eval_split="validation",
                               text_column="sentence", max_steps=2, generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    summary = record.summary
    assert summary["headline_metric"] == "eval_mcc"
    assert {"eval_accuracy", "eval_macro_f1", "eval_mcc", "eval_f1"} <= set(summary)
    rows = _rows(record.path / "eval_predictions.jsonl")
    assert [row["id"] for row in rows] == list(range(12))
    predicted = np.array([row["prediction"] for row in rows])
    labels = np.array([row["label"] for row in rows])
    assert all(row["prediction"] == int(np.argmax(row["logits"])) for row in rows)
    assert summary["eval_accuracy"] == pytest.approx(float(np.mean(predicted == labels)))
    assert rows[0]["label_name"] in ("unacceptable", "acceptable")


def test_a_regressor_trains_a_one_output_head_and_reports_correlations(glue, tmp_path):
    tokenizer = byte_tokenizer()
    model = tiny_bert(num_labels=1)
    record = train(model, _bert_plan(model), f"{glue}:stsb",
                   TrainConfig(task="regression", eval_split="validation",
                               text_column="sentence1,sentence2", max_steps=2, generate=False,
                               **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    assert record.summary["headline_metric"] == "eval_spearman"
    rows = _rows(record.path / "eval_predictions.jsonl")
    scores = np.array([row["prediction"] for row in rows])
    labels = np.array([row["label"] for row in rows])
    expected = regression_metrics(scores, labels)
    assert record.summary["eval_pearson"] == pytest.approx(expected["pearson"], rel=1e-4)
    assert record.summary["eval_spearman"] == pytest.approx(expected["spearman"], rel=1e-4)
    # Every row is one example of STS-B's validation split, with its own score.
    assert sorted(labels) == sorted(float(i % 6) for i in range(12))


def test_a_saved_classifier_loads_for_regression_with_a_one_output_mse_head(tmp_path):
    from alphasel.training.models import load_model

    folder = tmp_path / "bert"
    tiny_bert(num_labels=3).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    model, _, _ = load_model(folder, task="regression")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    assert model.classifier.out_features == 1
    # The same checkpoint for two classes: a new head of the data's size, the body its own.
    model, _, _ = load_model(folder, task="classification", labels=["no", "yes"])
    assert model.classifier.out_features == 2 and model.config.id2label == {0: "no", 1: "yes"}
    saved = tiny_bert(num_labels=3).state_dict()["bert.encoder.layer.0.output.dense.weight"]
    assert torch.equal(model.state_dict()["bert.encoder.layer.0.output.dense.weight"], saved)


def test_a_language_model_reports_perplexity_token_accuracy_and_per_example_loss(tmp_path):
    tokenizer = byte_tokenizer()
    record = train(tiny_llama(), make_plan(alpha_table(tiny_llama()), "blora", 1),
                   code_data(tokenizer),
                   TrainConfig(max_steps=2, generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    rows = _rows(record.path / "eval_predictions.jsonl")
    assert len(rows) == 6 and all(row["tokens"] > 0 for row in rows)
    tokens = sum(row["tokens"] for row in rows)
    mean = sum(row["loss"] * row["tokens"] for row in rows) / tokens
    assert record.summary["eval_perplexity"] == pytest.approx(math.exp(mean), rel=1e-6)
    correct = sum(row["correct_tokens"] for row in rows)
    assert record.summary["eval_token_accuracy"] == pytest.approx(correct / tokens)
    # The eval loss Trainer reports is a mean of batch means; the token mean is its neighbour.
    assert abs(mean - record.summary["eval_loss"]) < 0.1
    assert record.summary["headline_metric"] == "eval_loss"


# ---- lm-evaluation-harness and stdlib-mc -------------------------------------------------------


def test_stdlib_mc_asks_about_held_out_functions_only():
    items = questions()
    assert len(items) > 50 and questions.__wrapped__()[:5] == items[:5]  # the same every time
    sides = assign_sides(stdlib_files(), 0.1)
    for item in items:
        assert len(item["choices"]) == len(set(item["choices"])) == CHOICES
        assert 0 <= item["answer"] < CHOICES
        right = item["choices"][item["answer"]]
        assert right.lower() not in item["docstring"].lower()  # not given away
        assert sides[item["file"]] == "eval"  # from a file training never reads
        assert item["file"].split("/")[0].removesuffix(".py") == item["package"]
    answers = [item["answer"] for item in items]
    assert len(set(answers)) == CHOICES  # the right one is not always in one place


def test_the_harness_runs_stdlib_mc_before_and_after_training(tmp_path):
    pytest.importorskip("lm_eval")
    tokenizer = byte_tokenizer()
    record = train(tiny_llama(), make_plan(alpha_table(tiny_llama()), "blora", 1),
                   code_data(tokenizer),
                   TrainConfig(max_steps=2, generate=False, eval_harness="stdlib-mc",
                               eval_harness_limit=4, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    summary = record.summary
    assert 0.0 <= summary["harness_stdlib-mc_acc"] <= 1.0
    assert "harness_stdlib-mc_acc_stderr" in summary and "harness_stdlib-mc_acc_norm" in summary
    assert set(summary["harness"]) == {"before", "after"}
    logged = [row for row in record.metrics().to_dict("records")
              if not math.isnan(row.get("harness_stdlib-mc_acc", math.nan))]
    assert [row["step"] for row in logged] == [0, 2]
    assert all(row["harness_seconds"] > 0 for row in logged)


def test_the_harness_leaves_training_as_it_was(tmp_path):
    """lm-eval seeds the global random generators; with dropout drawing from them, a run with
    the harness must train exactly as the same run without it."""
    pytest.importorskip("lm_eval")
    tokenizer = byte_tokenizer()

    def run(name: str, **harness) -> dict:
        return train(tiny_llama(), make_plan(alpha_table(tiny_llama()), "blora", 1),
                     code_data(tokenizer),
                     TrainConfig(max_steps=3, generate=False, lora_dropout=0.5, **harness,
                                 **FAST),
                     tokenizer=tokenizer, out=tmp_path / name, progress=False).summary

    plain = run("plain")
    judged = run("judged", eval_harness="stdlib-mc", eval_harness_limit=2)
    assert judged["eval_loss"] == plain["eval_loss"]
    assert "harness_stdlib-mc_acc" in judged and "harness_stdlib-mc_acc" not in plain


def test_a_harness_task_whose_data_cannot_load_is_refused_before_training(tmp_path,
                                                                          monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "missing.yaml").write_text(
        "task: my_missing_task\ndataset_path: someone/not-in-any-cache\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: 0\n")
    with pytest.raises(TrainConfigError, match=r"--eval-harness my_missing_task: a task's data "
                                               r"cannot be loaded \(.*\); have it in the Hugging "
                                               "Face cache") as raised:
        harness_module.check_harness(["my_missing_task"], str(tasks))
    assert "\n" not in str(raised.value)


def test_harness_refusals_name_the_fix(monkeypatch):
    monkeypatch.setattr(harness_module, "harness_installed", lambda: False)
    with pytest.raises(TrainConfigError, match=r"pip install 'alphasel\[eval\]'"):
        harness_module.check_harness(["stdlib-mc"], None)
    monkeypatch.undo()
    with pytest.raises(TrainConfigError, match="--eval-harness evaluates language models"):
        TrainConfig(task="classification", eval_harness="stdlib-mc")
    with pytest.raises(TrainConfigError, match="add --eval-harness TASKS"):
        TrainConfig(eval_harness_limit=5)
    with pytest.raises(TrainConfigError, match="is not a directory of task YAMLs"):
        harness_module.check_harness(["stdlib-mc"], "/nonexistent/tasks")


@pytest.mark.integration
def test_an_unknown_harness_task_says_how_to_list_them():
    pytest.importorskip("lm_eval")
    with pytest.raises(TrainConfigError, match=r"lm-eval knows no such task \(list them with "
                                               r"`lm-eval ls tasks`"):
        harness_module.check_harness(["stdlib-mc", "no_such_task_anywhere"], None)
