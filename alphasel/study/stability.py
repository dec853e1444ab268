"""How stable an alpha-based selection is: would ALoRA and BLoRA choose the same modules had
alpha been estimated another way?

The KS estimator is noisy on small matrices (DESIGN.md: three iid 192×768 Student-t matrices
gave alpha 6.9 ± 2.4), so a selection's rank in a study means little if another estimator, or
another random draw of the downsampled submatrices, would have chosen other modules. For each
alpha-based scheme of a study at its planned k (same order and kinds), the selection from the
study's analysis is compared by Jaccard overlap |A ∩ B| / |A ∪ B| with

- ``estimator``: the same scheme on the ``median`` and ``peak`` estimators' tables, and
- ``downsampling``: the tables of ``draws`` downsampled analyses (``common`` shape, one seed
  each), every pair of draws.

Analyses go through the result cache, so a repeated study costs nothing here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pandas as pd

from alphasel.planner import ALPHA_SCHEMES, make_plan
from alphasel.powerlaw import ESTIMATORS
from alphasel.study.matrix import RunEntry

#: Downsampled analyses compared with one another.
DRAWS = 3
COLUMNS = ["label", "k", "comparison", "a", "b", "jaccard", "selected_a", "selected_b"]


def jaccard(a: set[str], b: set[str]) -> float:
    """|A ∩ B| / |A ∪ B|; two empty selections are the same selection (1.0)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def _recipes(entries: list[RunEntry]) -> list[tuple[str, dict]]:
    """(label, plan recipe) of every distinct alpha-based plan of the study."""
    recipes: dict[tuple, tuple[str, dict]] = {}
    for entry in entries:
        plan = entry.plan
        if not plan or plan.get("scheme") not in ALPHA_SCHEMES:
            continue
        recipe = {"scheme": plan["scheme"], "k": plan["k"], "order": plan.get("order"),
                  "kinds": plan.get("kinds")}
        key = (entry.label, recipe["k"])
        recipes.setdefault(key, (entry.label, recipe))
    return list(recipes.values())


def _selection(table: pd.DataFrame, recipe: dict) -> set[str]:
    plan = make_plan(table, recipe["scheme"], recipe["k"], order=recipe["order"],
                     kinds=recipe["kinds"])
    return {module.name for module in plan.modules}


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
        chosen = {name: _selection(table, recipe) for name, table in tables.items()}
        reference_name = f"estimator={reference_estimator}"
        pairs = [("estimator", reference_name, other) for other in chosen
                 if other != reference_name]
        chosen.update({name: _selection(table, recipe) for name, table in sampled.items()})
        pairs += [("downsampling", a, b) for a, b in itertools.combinations(sampled, 2)]
        for comparison, a, b in pairs:
            rows.append({"label": label, "k": recipe["k"], "comparison": comparison, "a": a,
                         "b": b, "jaccard": jaccard(chosen[a], chosen[b]),
                         "selected_a": len(chosen[a]), "selected_b": len(chosen[b])})
    return pd.DataFrame(rows, columns=COLUMNS)


def stability_summary(stability: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and number of pairs of the Jaccard overlap per label, k and comparison."""
    if stability.empty:
        return pd.DataFrame(columns=["label", "k", "comparison", "pairs", "mean_jaccard",
                                     "min_jaccard"])
    grouped = stability.groupby(["label", "k", "comparison"], sort=False)["jaccard"]
    return grouped.agg(pairs="count", mean_jaccard="mean", min_jaccard="min").reset_index()
