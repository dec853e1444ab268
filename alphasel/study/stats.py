"""Statistics across seeds: group means with 95% t-intervals, paired differences against the
baselines with their tests (:mod:`alphasel.study.significance`), the comparison table and the
verdict it reads as.

A *group* is the runs of one label in one *cell*: the same model, method, budget (or k, for
loose runs that were not planned to a budget), rank and sweep values; the runs of a group
differ only in their training seed. Every statistic is over all complete runs of a group: no
run is ever picked as the best, and failed or unfinished runs are counted, never averaged.

Schemes are compared by paired differences: a study gives every scheme the same training seeds
(same data order, same adapter initialisation), so the difference label − baseline at one seed
removes the seed's own luck, and its interval is far narrower than the two groups' intervals
side by side. The unmatched upper baselines (``all``, ``full``) train more than the budget by
design: they are one reference for every budget (and ``full``, without adapters, for every
rank), so when pairing, a baseline run's missing k, budget or rank matches any value, and an
unmatched baseline's k and budget are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from alphasel.errors import StudyError
from alphasel.study.collect import metric_columns, sweep_columns
from alphasel.study.directory import RunState
from alphasel.study.significance import (
    LEVEL,
    better,
    detectable_difference,
    holm,
    paired_tests,
    seeds_needed,
)
from alphasel.training.record import COMPONENTS
from alphasel.training.task_metrics import LOSSES

CONFIDENCE = 0.95
#: Metrics every table reports with their interval; beside them, every other final metric of
#: the runs (:func:`alphasel.study.collect.metric_columns`) that some run has.
INTERVAL_METRICS = LOSSES
#: What a table compares by when the runs name no headline metric.
DEFAULT_METRIC = "eval_loss"
#: Per-run quantities reported as their mean over a group's complete runs.
MEAN_COLUMNS = ("trainable_params", "also_params", "adapted_modules", "adapted_blocks",
                "alpha_shift", "wall_s", "tokens_per_s", "peak_memory_mb", *COMPONENTS)
#: Of those, the costs that vary from seed to seed: also std and 95% t-interval.
COST_COLUMNS = ("wall_s", "tokens_per_s", "peak_memory_mb")
#: The baselines of the comparison table's paired columns (vs_random, vs_all); a study may add
#: its own (``--baseline LABEL``).
BASELINES = ("random", "all")
#: Columns an unmatched baseline ignores when it is paired: it is one reference for all k.
BUDGET_COLUMNS = ("k", "budget")
PAIRED_COLUMNS = ["label", "baseline", "metric", "n_pairs", "mean", "std", "ci_low", "ci_high",
                  "p_t", "p_wilcoxon", "effect_size"]
#: Per baseline, the comparison table's numeric columns (``vs_<baseline>_<part>``) and the
#: paired_differences column each comes from (None: computed across the table).
COMPARISON_PARTS = {"mean": "mean", "ci_low": "ci_low", "ci_high": "ci_high",
                    "pairs": "n_pairs", "std": "std", "p": "p_t", "p_wilcoxon": "p_wilcoxon",
                    "effect_size": "effect_size", "p_holm": None, "p_wilcoxon_holm": None,
                    "detectable": None, "seeds_needed": None}


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE
               ) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high) of the Student-t interval for the mean of ``values``.

    NaN values (a run without that metric) are left out. With fewer than two values the
    spread is unknown: std, low and high are NaN (and all four with none).
    """
    data = np.asarray(list(values), dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(data.mean())
    if data.size < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(data.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, data.size - 1)) * std / math.sqrt(
        data.size)
    return mean, std, mean - half, mean + half


def grouping_columns(runs: pd.DataFrame) -> list[str]:
    """The columns that define a group: model_id, label, method, budget (k when no run has a
    budget: loose runs), rank and the sweep columns, those the table has. Each method is its
    own set of groups: a label is compared with a baseline of its own method only.

    A study's k is the plan's: a scheme counted in other units than the study's (alora by
    matrix in a study by block) has another k at the same budget, so k describes a group there
    rather than defining it."""
    cell = "budget" if "budget" in runs and runs["budget"].notna().any() else "k"
    return [column for column in ("model_id", "label", "method", cell, "rank")
            if column in runs] + sweep_columns(runs)


def summarize(runs: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per group of ``runs`` (a table from :mod:`alphasel.study.collect`).

    Columns: the grouping columns (``by``, default :func:`grouping_columns`); ``k`` and
    ``budget`` (their group mean) when not among them; ``matched``; ``n`` (complete runs),
    ``failed``, ``missing`` (never started, unfinished or killed); for eval_loss,
    best_eval_loss and eval_accuracy (when any run has it) ``<metric>_mean``, ``_std``,
    ``_ci_low``, ``_ci_high`` (95% t-interval over the complete runs); the means of
    trainable_params, adapted_modules, adapted_blocks, alpha_shift, wall_s, tokens_per_s and
    peak_memory_mb, the last three also with ``_std``, ``_ci_low``, ``_ci_high``; and
    ``budget_gap`` = mean (trainable_params − also_params) / budget − 1: the planned part
    against the budget (``--also`` parts, the same for every scheme of a method, are in
    trainable_params but not in the plan). Groups keep the order in which the table first lists
    them (a study's matrix order).
    """
    by = grouping_columns(runs) if by is None else list(by)
    _check_columns(runs, [*by, "status"])
    if not by:
        raise StudyError("summarize(by=[]): give at least one column to group by, e.g. "
                         "['label']")
    metrics = [metric for metric in [*INTERVAL_METRICS, *metric_columns(runs)]
               if metric in runs and (metric in INTERVAL_METRICS or runs[metric].notna().any())]
    described = [column for column in ("k", "budget") if column in runs and column not in by]
    rows = []
    if not runs.empty:
        for _, group in runs.groupby(by, dropna=False, sort=False):
            done = group[group["status"] == RunState.COMPLETE]
            row: dict[str, Any] = _group_values(group, by)
            for column in described:
                row[column] = _mean(group[column])
            row["matched"] = bool(group["matched"].all()) if "matched" in group else True
            row["n"] = len(done)
            row["failed"] = int((group["status"] == RunState.FAILED).sum())
            row["missing"] = int(group["status"].isin([RunState.MISSING,
                                                       RunState.INCOMPLETE]).sum())
            for metric in metrics:
                mean, std, low, high = t_interval(done[metric])
                row.update({f"{metric}_mean": mean, f"{metric}_std": std,
                            f"{metric}_ci_low": low, f"{metric}_ci_high": high})
            for column in MEAN_COLUMNS:
                row[column] = _mean(done[column]) if column in done else math.nan
            for column in COST_COLUMNS:
                _, std, low, high = t_interval(done[column] if column in done else [])
                row.update({f"{column}_std": std, f"{column}_ci_low": low,
                            f"{column}_ci_high": high})
            budget = _mean(group["budget"]) if "budget" in group else math.nan
            planned = row["trainable_params"] - (row["also_params"] if math.isfinite(
                row["also_params"]) else 0.0)
            row["budget_gap"] = (planned / budget - 1 if budget and math.isfinite(budget)
                                 else math.nan)
            rows.append(row)
    columns = [*by, *described, "matched", "n", "failed", "missing",
               *(f"{metric}_{part}" for metric in metrics
                 for part in ("mean", "std", "ci_low", "ci_high")),
               *MEAN_COLUMNS, *(f"{column}_{part}" for column in COST_COLUMNS
                                for part in ("std", "ci_low", "ci_high")), "budget_gap"]
    return _typed(rows, columns, runs, by)


def paired_differences(runs: pd.DataFrame, baseline_label: str, metric: str = "eval_loss",
                       by: Sequence[str] | None = None) -> pd.DataFrame:
    """Per label and cell: the seed-by-seed difference label − baseline of ``metric``.

    Complete runs only. Within a cell (``by`` less the label) every other label's runs are
    paired with the baseline's runs of the same seed; seeds without a partner are left out.
    Repeated runs of one label and seed are averaged first. Columns: the cell's columns, then
    label, baseline, metric, n_pairs, mean, std, ci_low, ci_high (95% t-interval of the mean
    difference), p_t and p_wilcoxon (paired t-test, Wilcoxon signed-rank; uncorrected) and
    effect_size (mean / std). No baseline run at all gives an empty frame: there is nothing to
    compare with.
    """
    by = grouping_columns(runs) if by is None else list(by)
    cell = [column for column in by if column != "label"]
    _check_columns(runs, [*by, "label", "status", "seed", metric])
    columns = [*cell, *PAIRED_COLUMNS]
    done = runs[runs["status"] == RunState.COMPLETE]
    baseline = done[done["label"] == baseline_label]
    others = done[done["label"] != baseline_label]
    if baseline.empty or others.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for _, group in others.groupby([*cell, "label"], dropna=False, sort=False):
        values = _group_values(group, [*cell, "label"])
        partners = baseline[matching(baseline, values, cell)]
        if partners.empty:
            continue
        per_seed = group.groupby("seed")[metric].mean()
        baseline_per_seed = partners.groupby("seed")[metric].mean()
        differences = (per_seed - baseline_per_seed).dropna()
        mean, std, low, high = t_interval(differences)
        rows.append({**values, "baseline": baseline_label, "metric": metric,
                     "n_pairs": len(differences), "mean": mean, "std": std, "ci_low": low,
                     "ci_high": high, **paired_tests(differences.to_numpy())})
    return _typed(rows, columns, runs, [*cell, "label"])


def compared_metric(runs: pd.DataFrame, metric: str | None = None) -> str:
    """The metric a table compares by: ``metric`` (``--metric``), else the runs' headline (a
    classifier's accuracy, a GLUE config's own: MCC for CoLA, ...; the eval loss of a language
    model). A metric the runs have no value of is refused, naming the ones they have."""
    if metric is None:
        named = runs["headline_metric"].dropna() if "headline_metric" in runs else []
        return str(named.mode().iloc[0]) if len(named) else DEFAULT_METRIC
    have = [column for column in [*INTERVAL_METRICS, *metric_columns(runs)]
            if column in runs and runs[column].notna().any()]
    if have and metric not in have:  # (no complete run yet: nothing to check against)
        raise StudyError(f"--metric {metric}: the runs have no value of it (they have "
                         f"{', '.join(have)}): choose one of those")
    return metric


def check_effect(effect: float | None, metric: str = "the compared metric") -> None:
    """Refuse an --effect that is not a positive difference."""
    if effect is not None and (isinstance(effect, bool) or not effect > 0):
        raise StudyError(f"--effect {effect} must be a positive difference of {metric}")


def baselines_of(runs: pd.DataFrame, extra: Sequence[str] = ()) -> list[str]:
    """The table's baselines: random and all, then ``extra`` (``--baseline LABEL``), each a
    label the runs have (an extra one they lack is refused, naming the labels there are)."""
    labels = list(dict.fromkeys(runs["label"])) if "label" in runs else []
    unknown = [label for label in extra if label not in labels]
    if unknown:
        raise StudyError(f"--baseline {', '.join(unknown)}: the runs have no such label (they "
                         f"have {', '.join(map(str, labels)) or 'none'}): name one of those")
    return list(dict.fromkeys([*BASELINES, *extra]))


def comparison_table(runs: pd.DataFrame, metric: str | None = None,
                     baselines: Sequence[str] = (), effect: float | None = None
                     ) -> pd.DataFrame:
    """:func:`summarize` plus the paired comparisons of ``metric`` against each baseline.

    Baselines: ``random``, ``all`` and ``baselines`` (labels of the runs). For each:
    ``vs_<baseline>`` (mean difference and its 95% interval as text, e.g. ``-0.012 [-0.020,
    -0.004]``; empty for the baseline itself and where no seed pairs) and the numbers behind it
    (:data:`COMPARISON_PARTS`): ``_mean``, ``_ci_low``, ``_ci_high``, ``_pairs``, ``_std`` (of
    the differences), ``_p`` (paired t-test), ``_p_wilcoxon``, their Holm-adjusted
    ``_p_holm`` and ``_p_wilcoxon_holm`` (each test's family: every comparison the table
    makes), ``_effect_size`` (mean / std), ``_detectable`` (the difference the comparison
    could detect at 80% power, :func:`alphasel.study.significance.detectable_difference`) and,
    with ``effect``, ``_seeds_needed`` to detect a difference of ``effect``. For a loss a
    negative difference means the label beat the baseline. Labels stay as the matrix wrote
    them; ``matched`` is False for the unmatched upper baselines (``all``, ``full``), whose
    budget and budget_gap are NaN. ``table.attrs``: the metric and the number of comparisons.
    """
    metric = compared_metric(runs, metric)
    check_effect(effect, metric)
    by = grouping_columns(runs)
    table = summarize(runs, by)
    chosen = baselines_of(runs, baselines)
    cell = [column for column in by if column != "label"]
    matches, asked = {}, set()
    for baseline in chosen:
        differences = paired_differences(runs, baseline, metric, by)
        found = {_key(row[column] for column in by): dict(row)
                 for _, row in differences.iterrows()}
        matches[baseline] = []
        for _, row in table.iterrows():
            match = found.get(_key(row[column] for column in by))
            # A − B and B − A are one question: the family (and the verdicts) hold it once.
            question = (_key(row[column] for column in cell),
                        frozenset((row["label"], baseline)))
            if match is not None and question in asked:
                match = None
            elif match is not None:
                asked.add(question)
            matches[baseline].append(match)
    compared = [row for rows in matches.values() for row in rows if row is not None]
    for test in ("p_t", "p_wilcoxon"):
        for row, adjusted in zip(compared, holm([row[test] for row in compared]), strict=True):
            row[f"{test}_holm"] = adjusted
    family = sum(1 for row in compared if math.isfinite(row["p_t"]))
    for row in compared:
        row["detectable"] = detectable_difference(int(row["n_pairs"]), row["std"], family)
        row["seeds_needed"] = (seeds_needed(effect, row["std"], family) if effect is not None
                               else math.nan)
    sources = {**COMPARISON_PARTS, "p_holm": "p_t_holm", "p_wilcoxon_holm": "p_wilcoxon_holm",
               "detectable": "detectable", "seeds_needed": "seeds_needed"}
    for baseline, rows in matches.items():
        table[f"vs_{baseline}"] = [
            "" if row is None else format_interval(row["mean"], row["ci_low"], row["ci_high"],
                                                   int(row["n_pairs"]))
            for row in rows]
        for part, source in sources.items():
            if part == "seeds_needed" and effect is None:
                continue
            table[f"vs_{baseline}_{part}"] = [math.nan if row is None else row[source]
                                              for row in rows]
    table.attrs.update(metric=metric, comparisons=family, baselines=chosen, effect=effect,
                       eval_sets=eval_sets(runs))
    return table


def eval_sets(runs: pd.DataFrame) -> int:
    """The most evaluation sets the complete runs of one model used (1 in a sound study;
    more when runs of another alphasel, or other data options, were mixed into it)."""
    if "evaluated_on" not in runs:
        return 1
    done = runs[(runs["status"] == RunState.COMPLETE) & runs["evaluated_on"].notna()]
    if done.empty:
        return 1
    return int(done.groupby(done["model_id"].fillna(""))["evaluated_on"].nunique().max())


def verdicts(table: pd.DataFrame) -> list[str]:
    """One line per comparison of a :func:`comparison_table`, at the Holm-corrected 5% level
    of its paired t-tests: ``better`` or ``worse`` (with the difference, its interval and the
    adjusted p), or ``no difference detected; this study could detect ≥ X``; with the table's
    ``effect``, how many seeds would detect it."""
    metric = table.attrs.get("metric", "eval_loss")
    effect = table.attrs.get("effect")
    lines = []
    if table.attrs.get("eval_sets", 1) > 1:
        lines.append(f"warning: the runs were evaluated on {table.attrs['eval_sets']} different "
                     "eval sets (runs of another alphasel or other data options): their "
                     "differences mix training and evaluation; compare runs of one eval set")
    for baseline in table.attrs.get("baselines", BASELINES):
        if f"vs_{baseline}_pairs" not in table:
            continue
        for index, row in table.iterrows():
            pairs = row[f"vs_{baseline}_pairs"]
            if not (isinstance(pairs, int | float) and math.isfinite(pairs) and pairs > 0):
                continue
            name = f"{describe_row(table, index)} vs {baseline}"
            mean, low, high = (row[f"vs_{baseline}_{part}"]
                               for part in ("mean", "ci_low", "ci_high"))
            shown = format_interval(mean, low, high, int(pairs))
            adjusted = row[f"vs_{baseline}_p_holm"]
            if not math.isfinite(adjusted):
                why = (f"{int(pairs)} seed pair(s): a test needs 2 or more" if pairs < 2 else
                       "the difference is the same at every seed: a t-test needs a spread; "
                       f"Wilcoxon's Holm p = {row[f'vs_{baseline}_p_wilcoxon_holm']:.3g}")
                lines.append(f"{name}: not tested ({why}); difference {shown}")
                continue
            if row[f"vs_{baseline}_std"] == 0:
                lines.append(f"{name}: no difference, the two trained alike at every seed "
                             f"({int(pairs)} seeds)")
                continue
            tested = f"Holm p = {adjusted:.3g}, {int(pairs)} seeds"
            if adjusted < LEVEL:
                word = "better" if better(metric, mean) else "worse"
                lines.append(f"{name}: {word}, {metric} {shown} ({tested})")
                continue
            detectable = row[f"vs_{baseline}_detectable"]
            could = (f"this study could detect ≥ {detectable:.3g}" if math.isfinite(detectable)
                     else "this study could not detect any difference")
            line = f"{name}: no difference detected ({shown}, {tested}); {could}"
            needed = row.get(f"vs_{baseline}_seeds_needed", math.nan)
            if effect is not None and isinstance(needed, float) and math.isfinite(needed):
                line += f"; {needed:.0f} seeds would detect {effect:g}"
            lines.append(line)
    return lines


def describe_row(table: pd.DataFrame, index: Any) -> str:
    """A row's label, with its method and the cell values that differ between the rows."""
    row = table.loc[index]
    parts = [str(row["label"])]
    for column in ("method", "budget", "k", "rank", *sweep_columns(table)):
        if column in table and table[column].dropna().nunique() > 1 and not _missing(
                row[column]):
            value = row[column]
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(shown if column == "method" else f"{column.removeprefix('sweep.')}="
                         f"{shown}")
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def format_interval(mean: float, low: float, high: float, n: int | None = None) -> str:
    """``mean [low, high]`` with as many decimals as the interval's width calls for (at least
    three); one value has no interval: ``mean (n=1)``; none: empty."""
    if n == 0 or not math.isfinite(mean):
        return ""
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.3f}" + (f" (n={n})" if n is not None else "")
    half = (high - low) / 2
    decimals = 3 if half <= 0 else min(6, max(3, -math.floor(math.log10(half))))
    return f"{mean:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"


def baseline_runs(runs: pd.DataFrame, group: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The complete runs of label ``baseline`` that ``group`` (the runs of one group) is paired
    with: those of its cell (see the module docstring for how an unmatched baseline's cell
    matches)."""
    by = grouping_columns(runs)
    cell = [column for column in by if column != "label"]
    done = runs[(runs["status"] == RunState.COMPLETE) & (runs["label"] == baseline)]
    return done[matching(done, _group_values(group, cell), cell)]


def matching(baseline: pd.DataFrame, values: dict[str, Any], cell: list[str]) -> pd.Series:
    """Which baseline runs share the cell ``values`` (see the module docstring: a baseline's
    missing value matches anything, an unmatched baseline ignores k and budget)."""
    unmatched = ~baseline["matched"].astype(bool) if "matched" in baseline else False
    mask = pd.Series(True, index=baseline.index)
    for column in cell:
        wildcard = baseline[column].isna()
        if column in BUDGET_COLUMNS:
            wildcard = wildcard | unmatched
        value = values[column]
        same = (pd.Series(False, index=baseline.index) if _missing(value)
                else (baseline[column] == value).fillna(False).astype(bool))
        mask &= wildcard | same
    return mask


def _check_columns(runs: pd.DataFrame, needed: list[str]) -> None:
    missing = [column for column in dict.fromkeys(needed) if column not in runs]
    if missing:
        raise StudyError(f"the runs table lacks column(s) {', '.join(missing)}: build it with "
                         "alphasel.study.collect (collect_study or collect_runs)")


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _group_values(group: pd.DataFrame, columns: list[str]) -> dict[str, Any]:
    """A group's values of ``columns`` as the table holds them (groupby's own keys turn a
    swept 4 beside a missing value into 4.0)."""
    return {column: group[column].iloc[0] for column in columns}


def _typed(rows: list[dict[str, Any]], columns: list[str], runs: pd.DataFrame,
           keys: list[str]) -> pd.DataFrame:
    """The table of ``rows``, its ``keys`` columns of the type they have in ``runs`` (a frame
    built from dicts turns whole numbers beside a missing value into floats)."""
    table = pd.DataFrame(rows, columns=columns)
    for column in keys:
        table[column] = pd.array([row[column] for row in rows], dtype=runs[column].dtype)
    return table


def _key(values: Iterable[Any]) -> tuple:
    """A group's key with every kind of missing value as None, to look groups up by."""
    return tuple(None if _missing(value) else value for value in values)


def _mean(values: pd.Series) -> float:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64").dropna()
    return float(numbers.mean()) if len(numbers) else math.nan
