"""How stable an alpha-based selection is: would ALoRA and BLoRA choose the same modules had
alpha been estimated another way, and how much does their choice overlap SNR's (Spectrum's)?

The KS estimator is noisy on small matrices (DESIGN.md: three iid 192×768 Student-t matrices
gave alpha 6.9 ± 2.4), so a selection's rank in a study means little if another estimator, or
another random draw of the downsampled submatrices, would have chosen other modules. For each
alpha-based scheme of a study at its planned k (same order and kinds), the selection from the
study's analysis is compared by Jaccard overlap |A ∩ B| / |A ∪ B| with

- ``estimator``: the same scheme on the ``median`` and ``peak`` estimators' tables, and
- ``downsampling``: the tables of ``draws`` downsampled analyses (``common`` shape, one seed
  each), every pair of draws;
- ``metric``: on the study's own table, the same scheme ranked by the other spectral signal
  (alpha's choice against SNR's, or SNR's against alpha's; for ``spectrum``, Spectrum's choice
  against ALoRA's by alpha with as many matrices): how much the two signals agree.

Each selection is ranked by the plan's own metric (``alora:metric=snr`` by snr).

Analyses go through the result cache, so a repeated study costs nothing here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pandas as pd

from alphasel.errors import PlanError
from alphasel.planner import ALPHA_SCHEMES, SPECTRUM_METRIC, make_plan
from alphasel.powerlaw import ESTIMATORS
from alphasel.study.matrix import RunEntry

#: Downsampled analyses compared with one another.
DRAWS = 3
COLUMNS = ["label", "method", "k", "comparison", "a", "b", "jaccard", "selected_a",
           "selected_b"]


def jaccard(a: set[str], b: set[str]) -> float:
    """|A ∩ B| / |A ∪ B|; two empty selections are the same selection (1.0)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def _recipes(entries: list[RunEntry]) -> list[tuple[str, dict]]:
    """(label, plan recipe) of every distinct alpha-based (and spectrum) plan of the study."""
    recipes: dict[tuple, tuple[str, dict]] = {}
    for entry in entries:
        plan = entry.plan
        if not plan or plan.get("scheme") not in (*ALPHA_SCHEMES, "spectrum"):
            continue
        ranks = {module["rank"] for module in plan["modules"]}
        uniform = plan.get("rank_alloc", "uniform") == "uniform" and len(ranks) == 1
        recipe = {"scheme": plan["scheme"], "k": plan["k"], "order": plan.get("order"),
                  "kinds": plan.get("kinds"), "metric": plan.get("metric") or "alpha",
                  "modules": len(plan["modules"]), "method": entry.method,
                  "budget": plan.get("budget") if uniform else None,
                  "rank": ranks.pop() if uniform else None}
        key = (entry.label, entry.method, recipe["k"])
        recipes.setdefault(key, (entry.label, recipe))
    return list(recipes.values())


def _selection(table: pd.DataFrame, recipe: dict) -> set[str]:
    """The modules the recipe chooses from ``table``: at its budget as the study planned it
    (uniform ranks), else at its planned k (spectrum: at the fraction that k of its units
    stands for)."""
    if recipe["scheme"] == "spectrum":
        plan = make_plan(table, "spectrum", None, kinds=recipe["kinds"],
                         fraction=_spectrum_fraction(table, recipe))
        return {module.name for module in plan.modules}
    options = dict(order=recipe["order"], kinds=recipe["kinds"], metric=recipe["metric"])
    if recipe["budget"] is not None:
        try:
            plan = make_plan(table, recipe["scheme"], None, budget=recipe["budget"],
                             rank=recipe["rank"], method=recipe["method"], **options)
            return {module.name for module in plan.modules}
        except PlanError:  # this table's ranking cannot meet the budget: compare at k
            pass
    plan = make_plan(table, recipe["scheme"], recipe["k"], **options)
    return {module.name for module in plan.modules}


def _spectrum_fraction(table: pd.DataFrame, recipe: dict) -> float:
    """The fraction at which spectrum takes its first k units on ``table``."""
    from alphasel.planner import candidates, parse_kinds, ranked_units

    frame = candidates(table, parse_kinds(recipe["kinds"]), SPECTRUM_METRIC)
    _, fractions, _ = ranked_units(frame, "spectrum", "matrix", None, None, None,
                                   SPECTRUM_METRIC)
    return fractions[min(recipe["k"], len(fractions)) - 1]


def _other_signal(recipe: dict) -> tuple[str, str, dict]:
    """(this selection's name, the other's name, the other's recipe) for the metric
    comparison: alpha ↔ snr for alora/blora; spectrum against ALoRA by alpha with as many
    matrices."""
    if recipe["scheme"] == "spectrum":
        return ("spectrum by snr", "alora by alpha",
                {**recipe, "scheme": "alora", "k": recipe["modules"], "metric": "alpha",
                 "order": "high", "budget": None})
    other = SPECTRUM_METRIC if recipe["metric"] != SPECTRUM_METRIC else "alpha"
    return (f"metric={recipe['metric']}", f"metric={other}", {**recipe, "metric": other})


def selection_stability(entries: list[RunEntry], analyse: Callable[..., pd.DataFrame],
                        reference: pd.DataFrame, reference_estimator: str = "ks",
                        draws: int = DRAWS) -> pd.DataFrame:
    """One row per compared pair (see the module docstring; columns :data:`COLUMNS`).

    ``analyse(estimator=..., downsample=..., seed=...)`` returns an alpha table of the study's
    model; ``reference`` is the study's own analysis (with ``reference_estimator``)."""
    recipes = _recipes(entries)
    if not recipes:
        return pd.DataFrame(columns=COLUMNS)
    tables = {f"estimator={reference_estimator}": reference}
    for estimator in ESTIMATORS:
        if estimator != reference_estimator:
            tables[f"estimator={estimator}"] = analyse(estimator=estimator)
    sampled = {f"downsample=common:seed={seed}": analyse(estimator=reference_estimator,
                                                         downsample="common", seed=seed)
               for seed in range(draws)}
    rows = []
    for label, recipe in recipes:
        if SPECTRUM_METRIC in reference.columns:
            own, other, other_recipe = _other_signal(recipe)
            mine, theirs = _selection(reference, recipe), _selection(reference, other_recipe)
            rows.append({"label": label, "method": recipe["method"], "k": recipe["k"],
                         "comparison": "metric", "a": own,
                         "b": other, "jaccard": jaccard(mine, theirs),
                         "selected_a": len(mine), "selected_b": len(theirs)})
        reference_name = f"estimator={reference_estimator}"
        if recipe["scheme"] == "spectrum":  # snr does not depend on the alpha estimator
            chosen, pairs = {}, []
        else:
            chosen = {name: _selection(table, recipe) for name, table in tables.items()}
            pairs = [("estimator", reference_name, other) for other in chosen
                     if other != reference_name]
        chosen.update({name: _selection(table, recipe) for name, table in sampled.items()})
        pairs += [("downsampling", a, b) for a, b in itertools.combinations(sampled, 2)]
        for comparison, a, b in pairs:
            rows.append({"label": label, "method": recipe["method"], "k": recipe["k"],
                         "comparison": comparison, "a": a,
                         "b": b, "jaccard": jaccard(chosen[a], chosen[b]),
                         "selected_a": len(chosen[a]), "selected_b": len(chosen[b])})
    return pd.DataFrame(rows, columns=COLUMNS)


def stability_summary(stability: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and number of pairs of the Jaccard overlap per label, k and comparison."""
    if stability.empty:
        return pd.DataFrame(columns=["label", "method", "k", "comparison", "pairs",
                                     "mean_jaccard", "min_jaccard"])
    keys = ["label", *(["method"] if "method" in stability else []), "k", "comparison"]
    grouped = stability.groupby(keys, sort=False)["jaccard"]
    return grouped.agg(pairs="count", mean_jaccard="mean", min_jaccard="min").reset_index()
