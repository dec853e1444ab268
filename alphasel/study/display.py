"""The comparison table as people read it: intervals as ``mean [low, high]``, counts as whole
numbers, unmatched baselines marked, one text cell per value. `alphasel compare` prints it and
the study report (:mod:`alphasel.plots.report`) renders it as HTML, so both show the same."""

from __future__ import annotations

import pandas as pd

from alphasel.study.collect import sweep_columns
from alphasel.study.stats import BASELINES, format_interval
from alphasel.training.task_metrics import EVAL_PREFIX, LOSSES, STDERR_SUFFIX, is_metric


def display_table(table: pd.DataFrame, several_models: bool = False) -> pd.DataFrame:
    """The comparison table as it is shown (text cells, one row per group, in table order):
    what `alphasel compare` prints and the study report renders as HTML."""
    shown = pd.DataFrame(index=table.index)
    if several_models:
        shown["model"] = table["model_id"].fillna("-")
    shown["label"] = [label if matched else f"{label} (unmatched)"
                      for label, matched in zip(table["label"], table["matched"], strict=True)]
    if "method" in table and table["method"].nunique() > 1:
        shown["method"] = table["method"].fillna("-")
    for column in ("budget", "k", "rank"):
        if column in table:
            shown[column] = table[column].map(_whole)
    for column in sweep_columns(table):
        shown[column.removeprefix("sweep.")] = table[column].map(
            lambda value: "-" if pd.isna(value) else str(value))
    for column in ("n", "failed", "missing"):
        shown[column] = table[column]
    # The summarised metrics: a <metric>_mean column each (a harness score's stderr left out).
    metrics = [(metric, metric.removeprefix(EVAL_PREFIX))
               for metric in (column.removesuffix("_mean") for column in table.columns
                              if str(column).endswith("_mean") and is_metric(str(column)))
               if metric not in LOSSES and not metric.endswith(STDERR_SUFFIX)]
    for metric, title in (("eval_loss", "eval_loss"), ("best_eval_loss", "best_eval"),
                          *metrics):
        if f"{metric}_mean" in table:
            shown[title] = [
                format_interval(mean, low, high, n) or "-" for mean, low, high, n in zip(
                    table[f"{metric}_mean"], table[f"{metric}_ci_low"],
                    table[f"{metric}_ci_high"], table["n"], strict=True)]
    for baseline in table.attrs.get("baselines", BASELINES):
        shown[f"vs_{baseline}"] = table[f"vs_{baseline}"].replace("", "-")
        if f"vs_{baseline}_p_holm" in table:
            shown[f"p_{baseline}"] = table[f"vs_{baseline}_p_holm"].map(
                lambda value: "-" if pd.isna(value) else f"{value:.2g}")
    shown["trainable"] = table["trainable_params"].map(
        lambda value: "-" if pd.isna(value) else f"{value:,.0f}")
    shown["budget_gap"] = table["budget_gap"].map(
        lambda value: "-" if pd.isna(value) else f"{value:+.1%}")
    shown["modules"] = table["adapted_modules"].map(_whole)
    shown["alpha_shift"] = table["alpha_shift"].map(
        lambda value: "-" if pd.isna(value) else f"{value:+.3f}")
    for column, title in (("wall_s", "wall_s"), ("tokens_per_s", "tok/s"),
                          ("peak_memory_mb", "peak_mb")):
        shown[title] = table[column].map(lambda value: "-" if pd.isna(value) else f"{value:.0f}")
    return shown


def _whole(value: object) -> str:
    """A count or size: whole numbers without decimals, a group mean that is not one with one."""
    if pd.isna(value):
        return "-"
    number = float(value)
    return f"{number:.0f}" if number.is_integer() else f"{number:.1f}"
