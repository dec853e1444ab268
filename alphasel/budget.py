"""Budgets: sizing a plan to a trainable-parameter count (the fair comparison between schemes).

A budget is counted in the plan's method's currency (:func:`alphasel.plan.rank_step_cost`):
r·(rows + cols) per adapted matrix, rows·cols per unfrozen one, which has no rank. The planner
(:func:`alphasel.planner.make_plan`) ranks its units; this module decides how many to take and at
which ranks:

- :func:`match_uniform`: the first k units of the ranking, and where the rank is free a uniform
  rank, whose total is closest to the budget (at the default rank 8 first; only if no k comes
  within the tolerance there does the rank change, the in-tolerance pair with the rank nearest 8
  winning);
- :func:`fill_budget`: when the rank cannot change (given, or an unfrozen matrix) and no first k
  comes within the tolerance, matrix-unit rankings fill the budget instead, passing over a
  matrix that would overshoot it;
- :func:`allocate_ranks`: ranks ∝ a weight (alpha^beta) under the budget, within one rank step.
"""

from __future__ import annotations

import numpy as np

from alphasel.errors import BudgetError, PlanError

#: How far a budget-matched plan may miss the target, relative to it.
BUDGET_TOLERANCE = 0.05
#: The uniform rank a plan gets when none is given (and where a budget search starts).
DEFAULT_RANK = 8
#: Largest uniform rank tried when the rank is free under a budget.
MAX_SEARCH_RANK = 512


def match_budget(unit_costs: np.ndarray, target: int, k: int | None, rank: int | None,
                 ranked: bool = True, fills: bool = False) -> tuple[list[int], int | None, str]:
    """The units to take (indices into the ranking, in its order), the uniform rank (None for
    unfrozen matrices) and a note, so that the plan's total comes within the tolerance of
    ``target``. ``unit_costs[i]`` is what ranked unit i costs per unit of rank (``ranked``) or
    in all (unfrozen matrices, no rank).

    In this order: the first ``k`` units (k free: the k whose total is closest) at ``rank`` (or
    the default); where the rank cannot change (given, or not ``ranked``) and ``fills``, the
    ranking fills the budget (:func:`fill_budget`); where it can, the rank changes too (the
    in-tolerance pair with the rank nearest the default wins). Nothing within the tolerance: a
    :class:`BudgetError` naming the closest total and what could be freed."""
    prefix = np.cumsum(np.asarray(unit_costs, dtype=np.int64))
    ks = np.arange(1, len(prefix) + 1) if k is None else np.array([k])
    rank_free = ranked and rank is None

    def best(ranks: np.ndarray) -> tuple[int, int, int]:
        """(k, rank, total) of the closest pair: in-tolerance first, then the rank nearest
        the default, the smaller miss, the smaller k (np.lexsort's last key is primary)."""
        totals = np.outer(ranks, prefix[ks - 1])  # ranks × ks
        miss = np.abs(totals - target) / target
        key = np.lexsort((np.broadcast_to(ks, miss.shape).ravel(), miss.ravel(),
                          np.abs(np.repeat(ranks, len(ks)) - DEFAULT_RANK),
                          (miss > BUDGET_TOLERANCE).ravel()))[0]
        row, col = divmod(int(key), len(ks))
        return int(ks[col]), int(ranks[row]), int(totals[row, col])

    def within(total: int) -> bool:
        return abs(total - target) <= BUDGET_TOLERANCE * target

    def miss(total: int) -> str:
        return f"{total:,} ({(total - target) / target:+.2%})"

    unit_rank = (rank or DEFAULT_RANK) if ranked else 1
    chosen_k, chosen_rank, total = best(np.array([unit_rank]))
    if not within(total) and fills and not rank_free:
        taken, filled = fill_budget(unit_rank * np.asarray(unit_costs), target)
        if within(filled):
            passed = taken[-1] + 1 - len(taken)
            return taken, unit_rank if ranked else None, (
                f"budget {target:,}: no first k matrices come within "
                f"{BUDGET_TOLERANCE:.0%}; took {len(taken)} in ranking order, passing over "
                f"{passed} that would overshoot → {miss(filled)}")
        if taken and abs(filled - target) < abs(total - target):  # an empty plan is no plan
            chosen_k, total = len(taken), filled
    elif not within(total) and rank_free:
        chosen_k, chosen_rank, total = best(np.arange(1, MAX_SEARCH_RANK + 1))
    at_rank = f" at rank {chosen_rank}" if ranked else ""
    if not within(total):
        if not ranked:
            what = "with whole matrices" + (f" (k={k} fixed)" if k is not None else "")
            fix = "leave out --k so it can change" if k is not None else "choose another budget"
        else:
            free = " and ".join(name for name, fixed in (("k", k), ("the rank", rank))
                                if fixed is None) or "nothing (k and --rank are both fixed)"
            what = f"by choosing {free}"
            fix = (("leave --rank unset so the rank can change, or " if rank is not None
                    else "") + "use --rank-alloc alpha")
        raise BudgetError(f"cannot match the budget of {target:,} trainable parameters "
                          f"within {BUDGET_TOLERANCE:.0%} {what}: the closest is "
                          f"k={chosen_k}{at_rank} with {miss(total)}; {fix}", total)
    return (list(range(chosen_k)), chosen_rank if ranked else None,
            f"budget {target:,}: chose k={chosen_k}{at_rank} → {miss(total)}")


def fill_budget(costs: np.ndarray, target: int) -> tuple[list[int], int]:
    """The units a ranking gives when it fills ``target``: walking it in order, each unit is
    taken when it brings the total closer to the target without passing it by more than the
    tolerance. Returns (the indices taken, their total)."""
    total, taken = 0, []
    ceiling = target * (1 + BUDGET_TOLERANCE)
    for index, cost in enumerate(int(cost) for cost in costs):
        if total + cost <= ceiling and abs(total + cost - target) < abs(total - target):
            taken.append(index)
            total += cost
    return taken, total


def allocate_ranks(weights: np.ndarray, costs: np.ndarray, caps: np.ndarray,
                   budget: int) -> np.ndarray:
    """Integer ranks ∝ ``weights``, each in [1, cap], costing at most ``budget`` in total.

    ``costs[i]`` is the parameter cost of one rank step of module i (rows + cols). The result
    misses the budget by less than one rank step of any module that could still grow.
    """
    weights = np.asarray(weights, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.int64)
    caps = np.maximum(np.asarray(caps, dtype=np.int64), 1)
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise PlanError("rank allocation needs positive, finite alpha^beta for every module: "
                        "check --beta and the table's alpha values")
    least, most = int(costs.sum()), int((caps * costs).sum())
    if budget < least:
        raise PlanError(f"--budget {budget:,} is below {least:,}, the cost of rank 1 on each of "
                        f"the {len(costs)} chosen modules: raise the budget or lower --k")
    if budget > most:
        raise PlanError(f"--budget {budget:,} exceeds {most:,}, the cost of full rank on each "
                        f"of the {len(costs)} chosen modules: lower the budget or raise --k")

    def ideal(scale: float) -> np.ndarray:
        return np.clip(scale * weights, 1.0, caps)

    # The continuous total grows monotonically with the scale, so bisection finds it; 200
    # halvings take float64 to its resolution.
    low, high = 0.0, float(caps.max()) / float(weights.min())
    for _ in range(200):
        middle = (low + high) / 2
        if (ideal(middle) * costs).sum() > budget:
            high = middle
        else:
            low = middle
    target = ideal(low)
    ranks = np.maximum(np.floor(target).astype(np.int64), 1)
    remaining = budget - int((ranks * costs).sum())
    # Hand out the leftover one rank at a time to the module furthest below its ideal share;
    # np.argmax takes the first on ties, i.e. model order.
    while True:
        can_grow = (ranks < caps) & (costs <= remaining)
        if not can_grow.any():
            return ranks
        deficit = np.where(can_grow, target - ranks, -np.inf)
        index = int(np.argmax(deficit))
        ranks[index] += 1
        remaining -= int(costs[index])
