"""The task's own metrics, computed from an evaluation's predictions by scikit-learn and scipy
(never hand-written formulas), and which of them leads a study's table.

- classification: accuracy, macro-F1 and Matthews' correlation (MCC); a binary task also the
  F1 of its positive class (label 1);
- regression (a one-output head trained with MSE): Pearson's and Spearman's correlations;
- causal language modelling: perplexity, exp of the token-mean eval loss, and next-token
  accuracy (:mod:`alphasel.training.lm_evaluation` counts both over the eval split's tokens).

Each becomes ``eval_<name>`` in metrics.jsonl and summary.json (transformers prefixes them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from alphasel.errors import StudyError

#: Metric names per task, in the order tables show them (without transformers' ``eval_``);
#: the eval loss is every task's.
TASK_METRICS = {"classification": ("accuracy", "macro_f1", "mcc", "f1"),
                "regression": ("pearson", "spearman"),
                "causal": ("perplexity", "token_accuracy")}
#: Task metrics a smaller value of which is better (as the loss's).
LOWER_IS_BETTER = ("perplexity",)
#: lm-evaluation-harness metrics a smaller value of which is better (those lm-eval registers
#: with ``higher_is_better=False``, lm_eval/api/metrics.py).
HARNESS_LOWER_IS_BETTER = ("perplexity", "word_perplexity", "byte_perplexity",
                           "bits_per_byte", "ter", "brier_score")
#: The headline metric of a known GLUE config (the study table's main column); other
#: configs lead with accuracy.
GLUE_HEADLINE = {"cola": "mcc", "mrpc": "f1", "qqp": "f1", "stsb": "spearman"}
#: The losses every run reports in summary.json, before its task's metrics: final and best.
LOSSES = ("eval_loss", "best_eval_loss")
#: How lm-eval's standard-error columns end: each describes a score, it is none.
STDERR_SUFFIX = "_stderr"
#: A run's final metrics in summary.json: its evaluation's (``eval_*``, as transformers names
#: them) and lm-evaluation-harness's (``harness_<task>_<metric>``).
EVAL_PREFIX, HARNESS_PREFIX = "eval_", "harness_"
#: summary.json and metrics.jsonl keys under those prefixes that are no metric of the model:
#: the seconds evaluation took inside training, and the harness's seconds.
EVAL_IN_TRAIN, HARNESS_SECONDS = "eval_in_train_s", "harness_seconds"


def is_metric(key: str) -> bool:
    """Whether a summary.json key is one of the run's final metrics (a column studies
    summarise over seeds; a harness metric's ``_stderr`` is one too, of lm-eval's)."""
    return (key.startswith((EVAL_PREFIX, HARNESS_PREFIX))
            and key not in (EVAL_IN_TRAIN, HARNESS_SECONDS))


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of a metric column (``eval_accuracy``, ``harness_arc_easy_acc``)
    means a better model: a task metric but perplexity, a harness score but those of
    :data:`HARNESS_LOWER_IS_BETTER`; not the loss, not a standard error (which is no score)."""
    if metric.startswith(HARNESS_PREFIX):
        return not metric.endswith((STDERR_SUFFIX, *(f"_{name}" for name in
                                                     HARNESS_LOWER_IS_BETTER)))
    name = metric.removeprefix(EVAL_PREFIX)
    return (any(name in names for names in TASK_METRICS.values())
            and name not in LOWER_IS_BETTER)


def check_metric(metric: str | None, task: str, harness_tasks: list[str]) -> None:
    """Refuse, before a study trains, a --metric its runs cannot have: another task's metric,
    a harness score of a task not evaluated; naming those they will have."""
    if metric is None:
        return
    known = [*LOSSES,
             *(f"{EVAL_PREFIX}{name}" for name in TASK_METRICS.get(task, ()))]
    harness = tuple(f"{HARNESS_PREFIX}{name}_" for name in harness_tasks)
    if metric in known or (harness and metric.startswith(harness)):
        return
    scores = ", ".join(f"{prefix}<metric>" for prefix in harness)
    raise StudyError(f"--metric {metric}: the runs of a {task} study will not have it; they "
                     f"will have {', '.join(known)}"
                     + (f" and the harness scores {scores}" if harness else "")
                     + ": name one of those")


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """accuracy, macro_f1 and mcc of the argmax of ``logits`` (examples × classes) against
    ``labels``; with two classes also f1, the positive class's (label 1)."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predicted = np.argmax(np.asarray(logits), axis=-1)
    labels = np.asarray(labels)
    metrics = {"accuracy": float(accuracy_score(labels, predicted)),
               "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
               "mcc": float(matthews_corrcoef(labels, predicted))}
    if np.asarray(logits).shape[-1] == 2:
        metrics["f1"] = float(f1_score(labels, predicted, pos_label=1, zero_division=0))
    return metrics


def regression_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson's and Spearman's correlation of the predicted ``scores`` with ``labels`` (NaN
    when either side is constant: no correlation is defined)."""
    from scipy import stats

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if np.ptp(scores) == 0 or np.ptp(labels) == 0:
        return {"pearson": math.nan, "spearman": math.nan}
    return {"pearson": float(stats.pearsonr(scores, labels).statistic),
            "spearman": float(stats.spearmanr(scores, labels).statistic)}


def headline_metric(task: str, config_name: str | None = None) -> str:
    """The summary key a study leads with: a GLUE config's own metric, accuracy for other
    classification, spearman for regression, the eval loss for language models."""
    if task == "causal":
        return "eval_loss"
    if config_name in GLUE_HEADLINE:
        return f"eval_{GLUE_HEADLINE[config_name]}"
    return "eval_spearman" if task == "regression" else "eval_accuracy"


class PredictionMetrics:
    """A Trainer's ``compute_metrics`` for a classifier or a regressor that keeps the last
    evaluation's predictions (for eval_predictions.jsonl, written once, after the final
    evaluation)."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, prediction: Any) -> dict[str, float]:
        logits, labels = prediction
        logits, labels = np.asarray(logits), np.asarray(labels)
        self.last = (logits, labels)
        if self.task == "regression":
            return regression_metrics(logits.reshape(-1), labels)
        return classification_metrics(logits, labels)

    def rows(self, label_names: list[str] | None = None) -> list[dict[str, Any]]:
        """eval_predictions.jsonl's rows: per example its id (its place in the eval split), the
        label, the prediction and the logits (a regressor's score)."""
        if self.last is None:
            return []
        logits, labels = self.last
        if self.task == "regression":
            return [{"id": index, "label": float(label), "prediction": float(score)}
                    for index, (score, label) in enumerate(zip(logits.reshape(-1), labels,
                                                               strict=True))]
        rows = []
        for index, (row, label) in enumerate(zip(logits, labels, strict=True)):
            predicted = int(np.argmax(row))
            entry: dict[str, Any] = {"id": index, "label": int(label), "prediction": predicted,
                                     "logits": [float(value) for value in row]}
            if label_names:
                entry.update(label_name=label_names[int(label)],
                             prediction_name=label_names[predicted])
            rows.append(entry)
        return rows
