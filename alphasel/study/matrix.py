"""A study's runs: every method × scheme × k × rank × sweep value × seed, each scheme's plan
matched to one reference budget per method.

The budget of ``k`` units at rank ``r`` is r·k·(mean LoRA cost of one unit), a unit's cost
being Σ(rows + cols) over its candidate matrices: for a transformer whose blocks are alike this
is exactly what ``first``, ``last``, ``band`` and ``blora`` train with k blocks. An unfreeze
method counts in its own currency: k·(mean Σ rows·cols of one unit), with no rank. Each method
is its own set of groups (schemes are compared within a method, never across). A scheme that
counts in the study's unit keeps k (and is checked to be within the planner's 5%); one that
counts otherwise (``alora`` by matrix in a study by block) has its k chosen by the planner's
budget matching at the same rank. ``all`` and ``full`` are the unmatched upper baselines.
``random`` draws its selection from the run's training seed (paired design: seed s gives every
scheme the same data order and adapter initialisation).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from alphasel.budget import BUDGET_TOLERANCE
from alphasel.errors import PlanError, StudyError
from alphasel.plan import DEFAULT_METHOD, UNFREEZE, InjectionPlan, rank_step_cost
from alphasel.planner import SCHEME_UNITS, candidates, make_plan, parse_kinds
from alphasel.study.spec import UNMATCHED, MethodSpec, SchemeSpec, StudySpec


@dataclass
class RunEntry:
    """One run of the study, as matrix.json lists it."""

    run_id: str
    label: str
    scheme: str
    k: int | None
    rank: int | None
    seed: int
    sweep: dict[str, Any]
    matched: bool
    budget: int | None
    trainable_params: int | None
    config: dict[str, Any]
    plan: dict[str, Any] | None

    @property
    def method(self) -> str:
        """How the run trains (its config's): lora, dora, rslora, unfreeze, or full."""
        return str(self.config.get("method", DEFAULT_METHOD))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unit_budget(table: pd.DataFrame, kinds: list[str], unit: str, k: int, rank: int | None,
                method: str = DEFAULT_METHOD) -> int:
    """k × the mean cost of one unit (block or matrix) in ``method``'s currency: rank × Σ(rows
    + cols) of its matrices for adapters, Σ rows × cols for unfrozen matrices (no rank)."""
    frame = candidates(table, kinds)
    costs = rank_step_cost(frame["rows"], frame["cols"], method)
    rank = 1 if method == UNFREEZE else rank
    if unit == "block":
        per_unit = costs.groupby(frame["block"]).sum().mean()
    else:
        per_unit = costs.mean()
    return int(round(rank * k * float(per_unit)))


def plan_scheme(table: pd.DataFrame, scheme: SchemeSpec, k: int, rank: int | None, unit: str,
                budget: int, seed: int, method: str = DEFAULT_METHOD) -> InjectionPlan | None:
    """The plan of ``scheme`` at this budget, in ``method``'s currency (None for full
    fine-tuning)."""
    if scheme.scheme == "full":
        return None
    options: dict[str, Any] = {key: value for key, value in scheme.options
                               if key in ("order", "kinds", "unit", "start", "metric")}
    options["method"] = method
    if scheme.scheme == "random":
        options["seed"] = seed
        options.setdefault("unit", unit)
    try:
        if scheme.scheme == "all":
            return make_plan(table, "all", rank=rank, **options)
        scheme_unit = options.get("unit") or SCHEME_UNITS[scheme.scheme]
        if scheme.option("rank_alloc") == "alpha":
            chosen = k if scheme_unit == unit else _matched_k(table, scheme, rank, budget,
                                                              options)
            return make_plan(table, scheme.scheme, chosen, rank_alloc="alpha",
                             beta=scheme.option("beta"), budget=budget, **options)
        if scheme_unit == unit and scheme.scheme != "spectrum":  # spectrum: by its fraction
            plan = make_plan(table, scheme.scheme, k, rank=rank, **options)
            if abs(plan.trainable_params - budget) <= BUDGET_TOLERANCE * budget:
                return plan
        return make_plan(table, scheme.scheme, None, rank=rank, budget=budget, **options)
    except PlanError as err:
        at_rank = f", rank {rank}" if rank is not None else f" ({method})"
        raise StudyError(f"scheme '{scheme.label}' at k={k}{at_rank} (budget {budget:,} "
                         f"trainable parameters): {err}") from None


def _matched_k(table: pd.DataFrame, scheme: SchemeSpec, rank: int, budget: int,
               options: dict[str, Any]) -> int:
    """The k at which a uniform-rank plan of ``scheme`` meets ``budget`` (rank allocation by
    alpha then spreads the same budget over those units)."""
    return make_plan(table, scheme.scheme, None, rank=rank, budget=budget, **options).k


def run_id(label: str, k: int | None, rank: int | None, seed: int, sweep: dict[str, Any],
           identity: dict[str, Any], method: str = DEFAULT_METHOD) -> str:
    """A readable id that derives from the run's resolved configuration: the same study gives
    the same ids, so a resumed study finds its runs. The method shows unless it is lora (or
    full, which the label says)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    parts = [re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")]
    if method not in (DEFAULT_METHOD, "full"):
        parts.append(method)
    if k is not None:
        parts.append(f"k{k}")
    if rank is not None:
        parts.append(f"r{rank}")
    parts += [f"{key}-{value}" for key, value in sorted(sweep.items())]
    parts.append(f"s{seed}")
    return "-".join(str(part) for part in parts) + "-" + digest.hexdigest()[:8]


def expand(spec: StudySpec, table: pd.DataFrame) -> list[RunEntry]:
    """Every run of the study, in the order they will run (seed-major, so an interrupted study
    has whole seeds of every scheme rather than every seed of the first schemes)."""
    kinds = parse_kinds(None)
    sweeps = [dict(zip(spec.sweep, values, strict=True))
              for values in itertools.product(*spec.sweep.values())] or [{}]
    entries: list[RunEntry] = []
    plans: dict[tuple, InjectionPlan | None] = {}
    for seed, method, sweep, scheme in itertools.product(spec.seeds, spec.methods, sweeps,
                                                         spec.schemes):
        unit = spec.unit_of(method)
        ranks = [None] if method.method == UNFREEZE else spec.rank
        for k, rank in itertools.product(spec.ks_of(method), ranks):
            budget = unit_budget(table, kinds, unit, k, rank, method.method)
            key = (method.label, scheme.label, k, rank,
                   seed if scheme.scheme == "random" else None)
            if key not in plans:
                plans[key] = plan_scheme(table, scheme, k, rank, unit, budget, seed,
                                         method.method)
            entries.append(_entry(spec, method, scheme, plans[key], k, rank, budget, seed,
                                  sweep))
    # The upper baselines do not depend on k (full: nor on the rank or method): train them
    # once.
    unique: dict[str, RunEntry] = {}
    for entry in entries:
        unique.setdefault(entry.run_id, entry)
    return list(unique.values())


def _entry(spec: StudySpec, method: MethodSpec, scheme: SchemeSpec, plan: InjectionPlan | None,
           k: int, rank: int | None, budget: int, seed: int, sweep: dict[str, Any]) -> RunEntry:
    """One run of the matrix: ``scheme``'s ``plan`` trained with ``method`` at ``seed``."""
    matched = scheme.scheme not in UNMATCHED
    config = spec.config(seed, sweep, scheme, method).to_dict()
    identity = {"model": spec.model, "data": spec.data, "label": scheme.label,
                "modules": [(m.name, m.rank, m.lora_alpha) for m in plan.modules]
                if plan else "all weights", "config": config}
    rank = rank if plan else None
    return RunEntry(
        run_id=run_id(scheme.label, k if matched else None, rank, seed, sweep, identity,
                      config["method"]),
        label=scheme.label, scheme=scheme.scheme, k=plan.k if plan else None, rank=rank,
        seed=seed, sweep=sweep, matched=matched, budget=budget if matched else None,
        trainable_params=plan.trainable_params if plan else None, config=config,
        plan=plan.to_dict() if plan else None)
