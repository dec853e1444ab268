"""The planner: an alpha table in, an :class:`InjectionPlan` out (the schemes of DESIGN.md).

Every scheme orders its *units* (matrices or blocks) and takes the first ``k`` of them, or under
a budget the units :mod:`alphasel.budget` decides; plan modules are then listed in model order.
Ties are broken by model order: the earlier matrix, the lower block.

Budgets are counted in the plan's method's currency (:func:`alphasel.plan.rank_step_cost`):
r·(rows + cols) per adapted matrix, rows·cols per unfrozen one (``method="unfreeze"``, where
there is no rank to choose: only which units). Budget policy (``budget`` or ``budget_from``):
- ``rank_alloc="alpha"``: the ranks are allocated to meet the budget within one rank step
  (never over it); ``k`` must be given.
- ``rank_alloc="uniform"``: :func:`alphasel.budget.match_budget`: the first k at the given or
  default rank; where the rank is free and no k comes within 5%, the rank changes too; where it
  cannot change (given, or unfrozen matrices), matrix-unit ``alora`` and ``random``
  (:data:`FILL_SCHEMES`) fill the budget instead, passing over a matrix that would overshoot it
  (the plan's note says how many); random by matrix tries further draws of its seed
  (:data:`RANDOM_DRAWS`) until one fills it. Outside 5% → error naming the closest total.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from alphasel import __version__
from alphasel.budget import DEFAULT_RANK, allocate_ranks, match_budget
from alphasel.columns import METRICS, STATUS_OK, TOTAL_MATRIX_PARAMS, metadata
from alphasel.errors import BudgetError, PlanError, TableError
from alphasel.layout import CANDIDATE_KINDS, KIND_GROUPS
from alphasel.plan import (
    DEFAULT_METHOD,
    PLAN_METHODS,
    UNFREEZE,
    InjectionPlan,
    PlannedModule,
    rank_step_cost,
)
from alphasel.provenance import utc_now
from alphasel.table import check_table

SCHEMES = ("alora", "blora", "spectrum", "random", "first", "last", "band", "all")
#: Schemes that rank by a metric (``--metric``, alpha by default) and take ``order``.
ALPHA_SCHEMES = ("alora", "blora")
#: Spectrum's metric: the top ``fraction`` of each kind by it.
SPECTRUM_METRIC = "snr"
#: The unit each scheme counts with ``k``; random takes either (default matrix).
SCHEME_UNITS = {"alora": "matrix", "blora": "block", "spectrum": "matrix", "first": "block",
                "last": "block", "band": "block", "all": "matrix"}
UNITS = ("matrix", "block")
ORDERS = ("high", "low")
RANK_ALLOCS = ("uniform", "alpha")
DEFAULT_BETA = 1.0
#: Matrix-unit schemes that fill a budget past matrices that would overshoot it, when no first
#: k of their ranking comes within the tolerance and the rank cannot change (matrices differ
#: in size: a SmolLM2 up_proj holds eight times a k_proj). The rest keep to their first k.
FILL_SCHEMES = ("alora", "random")
#: Draws of its seed a random-by-matrix plan tries for one that meets its budget (each filled
#: as above); the first that does is the plan.
RANDOM_DRAWS = 64
TABLE_COLUMNS = ["name", "block", "kind", "rows", "cols", "alpha"]


def parse_kinds(kinds: str | Iterable[str] | None) -> list[str]:
    """Candidate kinds from ``"q,k,v"``, ``"attn"``, ``["mlp", "q"]`` or None (all), in
    canonical order."""
    if kinds is None:
        return list(CANDIDATE_KINDS)
    items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    items = [str(item).strip() for item in items if str(item).strip()]
    valid = ", ".join([*KIND_GROUPS, *CANDIDATE_KINDS])
    if not items:
        raise PlanError(f"--kinds is empty: give one or more of {valid}")
    chosen: set[str] = set()
    for item in items:
        if item in KIND_GROUPS:
            chosen.update(KIND_GROUPS[item])
        elif item in CANDIDATE_KINDS:
            chosen.add(item)
        elif item in ("embed", "head", "other"):
            raise PlanError(f"--kinds {item}: embeddings, the head and unrecognised modules are "
                            f"never candidates; use one or more of {valid}")
        else:
            raise PlanError(f"unknown kind '{item}' in --kinds: use one or more of {valid}")
    return [kind for kind in CANDIDATE_KINDS if kind in chosen]


def candidates(table: pd.DataFrame, kinds: list[str], metric: str = "alpha") -> pd.DataFrame:
    """The table's rows that may be chosen, in table (model) order, with ``usable`` marking a
    finite alpha from a successful fit, ``score`` the ``metric``'s value and ``rankable`` a
    score to rank by (alpha: ``usable``; another metric: any value, ``inf`` included)."""
    check_table(table, TABLE_COLUMNS)
    _check_metric(table, metric, kinds)
    duplicated = table["name"][table["name"].duplicated()]
    if len(duplicated):
        raise TableError(f"alpha table lists module '{duplicated.iloc[0]}' twice: "
                         "use a table written by `alphasel analyze`")
    frame = table.loc[table["kind"].isin(kinds), TABLE_COLUMNS].copy()
    frame["position"] = np.flatnonzero(table["kind"].isin(kinds).to_numpy())
    frame["block"] = pd.to_numeric(frame["block"], errors="coerce").astype("Int64")
    frame["alpha"] = pd.to_numeric(frame["alpha"], errors="coerce").astype("float64")
    for column in ("rows", "cols"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any() or (values < 1).any():
            bad = frame["name"][values.isna() | (values < 1)].iloc[0]
            raise TableError(f"alpha table has no valid '{column}' for '{bad}': "
                             "use a table written by `alphasel analyze`")
        frame[column] = values.astype("int64")
    usable = np.isfinite(frame["alpha"].to_numpy()) & (frame["alpha"].to_numpy() > 0)
    if "status" in table.columns:
        usable &= (table.loc[frame.index, "status"] == STATUS_OK).to_numpy()
    frame["usable"] = usable
    if metric == "alpha":
        frame["score"], frame["rankable"] = frame["alpha"], usable
    else:
        score = pd.to_numeric(table.loc[frame.index, metric], errors="coerce").astype("float64")
        frame["score"], frame["rankable"] = score.to_numpy(), score.notna().to_numpy()
    return frame.reset_index(drop=True)


def _check_metric(table: pd.DataFrame, metric: str, kinds: list[str]) -> None:
    """The table has ``metric`` with values for the candidates (an old table lacks snr)."""
    present = [column for column in METRICS if column in table.columns]
    if metric not in table.columns:
        raise TableError(f"--metric {metric}: the alpha table has no '{metric}' column (it has "
                         f"{', '.join(present)}): choose one of those, or re-analyse the model "
                         "with this alphasel (`alphasel analyze MODEL`) to add it")
    values = pd.to_numeric(table.loc[table["kind"].isin(kinds), metric], errors="coerce")
    if len(values) and values.notna().sum() == 0:  # no candidates at all: make_plan says so
        raise TableError(f"--metric {metric}: the alpha table's '{metric}' column has no values "
                         "for the candidates (a table from before the column existed?): "
                         "re-analyse the model (`alphasel analyze MODEL`)")


def _blocks(frame: pd.DataFrame) -> list[int]:
    return sorted(int(block) for block in frame["block"].dropna().unique())


def _rows_of(frame: pd.DataFrame, block: int) -> list[int]:
    return frame.index[frame["block"] == block].tolist()


def ranked_units(frame: pd.DataFrame, scheme: str, unit: str, order: str | None,
                 seed: int | None, start: int | None, metric: str = "alpha", draw: int = 0
                 ) -> tuple[list[list[int]], list, list[str]]:
    """The units a scheme takes, best first (the plan takes the first k); for random, the
    ``draw``-th (from 0) permutation of the seed's stream.

    Returns the units as lists of row indices of ``frame``, the value that ranked each unit
    (the metric, its block mean, the spectrum fraction at which the unit enters, or None) and
    notes about what was left out.
    """
    notes: list[str] = []
    descending = order == "high"
    if scheme in ("alora", "spectrum"):
        usable = frame[frame["rankable"]]
        skipped = frame.loc[~frame["rankable"], "name"].tolist()
        if skipped:
            notes.append(f"{len(skipped)} candidate matrix(es) have no {metric} and were not "
                         f"selectable: {', '.join(skipped[:5])}")
        if scheme == "spectrum":
            return _spectrum_units(usable) + (notes,)
        # A stable sort on position first makes ties fall back to model order.
        ranked = usable.sort_values("position").sort_values(
            "score", ascending=not descending, kind="stable")
        return [[index] for index in ranked.index], ranked["score"].tolist(), notes
    in_blocks = frame[frame["block"].notna()]
    if unit == "block" and len(in_blocks) < len(frame):
        notes.append(f"{len(frame) - len(in_blocks)} candidate matrix(es) lie outside the "
                     "blocks and cannot be chosen by block")
    if scheme == "blora":
        means = in_blocks[in_blocks["rankable"]].groupby("block")["score"].mean()
        no_alpha = [block for block in _blocks(in_blocks) if block not in means.index]
        if no_alpha:
            notes.append(f"block(s) {', '.join(map(str, no_alpha))} have no candidate with "
                         f"{'an alpha' if metric == 'alpha' else metric} and were not "
                         "selectable")
        ranked = sorted(means.items(), key=lambda item: (-item[1] if descending else item[1],
                                                         int(item[0])))
        return ([_rows_of(in_blocks, int(block)) for block, _ in ranked],
                [float(mean) for _, mean in ranked], notes)
    if scheme == "all":
        return [[index] for index in frame.index], [None] * len(frame), notes
    if scheme == "random":
        rng = np.random.default_rng(seed)
        if unit == "matrix":
            for _ in range(draw):
                rng.permutation(len(frame))
            order_ = rng.permutation(len(frame))
            return [[int(frame.index[i])] for i in order_], [None] * len(frame), notes
        blocks = _blocks(in_blocks)
        order_ = rng.permutation(len(blocks))
        return [_rows_of(in_blocks, blocks[i]) for i in order_], [None] * len(blocks), notes
    blocks = _blocks(in_blocks)
    if scheme == "last":
        blocks = blocks[::-1]
    elif scheme == "band":
        if start not in blocks:
            raise PlanError(f"--start {start} is not a block with candidates: use one of "
                            f"{', '.join(map(str, blocks))}")
        band = [start]
        while band[-1] + 1 in blocks:
            band.append(band[-1] + 1)
        blocks = band
    return [_rows_of(in_blocks, block) for block in blocks], [None] * len(blocks), notes


def _spectrum_units(usable: pd.DataFrame) -> tuple[list[list[int]], list]:
    """Spectrum's rule as units: for a fraction f each kind gives its ⌊n·f⌋ highest-SNR
    matrices, so a kind's i-th best (from 1) enters at f = i/n. The units are the matrices
    entering at each such fraction, in increasing order, with that fraction: the first k units
    are Spectrum's choice at the k-th fraction, and a budget can be matched by k."""
    entering: dict[Fraction, list[int]] = {}
    for _, rows in usable.groupby("kind", sort=False):
        ranked = rows.sort_values("position").sort_values("score", ascending=False,
                                                          kind="stable")
        for place, index in enumerate(ranked.index, start=1):
            entering.setdefault(Fraction(place, len(ranked)), []).append(int(index))
    fractions = sorted(entering)
    return [sorted(entering[f], key=lambda i: int(usable.at[i, "position"])) for f in fractions], \
        [float(f) for f in fractions]


def spectrum_k(fractions: list[float], fraction: float) -> int:
    """How many spectrum units :func:`_spectrum_units` gives at ``fraction`` (floor per kind,
    as Spectrum takes ``int(n · top_percent / 100)``)."""
    return sum(1 for entered in fractions if entered <= fraction + 1e-12)


def _check_options(scheme: str, k: int | None, order: str | None, unit: str | None,
                   seed: int | None, start: int | None, rank: int | None, rank_alloc: str,
                   beta: float | None, budget: int | None, has_budget_from: bool,
                   metric: str, fraction: float | None, method: str,
                   lora_alpha: float | None) -> None:
    """Collect every problem with the options and raise them together."""
    problems = []
    if scheme not in SCHEMES:
        raise PlanError(f"unknown scheme '{scheme}': use one of {', '.join(SCHEMES)}")
    if method not in PLAN_METHODS:
        problems.append(f"unknown method '{method}': use one of {', '.join(PLAN_METHODS)}")
    elif method == UNFREEZE:
        given = [flag for flag, value in (("--rank", rank), ("--lora-alpha", lora_alpha),
                                          ("--beta", beta)) if value is not None]
        given += ["--rank-alloc alpha"] if rank_alloc == "alpha" else []
        if given:
            problems.append(f"{', '.join(given)} shape adapters; --method {UNFREEZE} trains "
                            "the matrices themselves: drop them")
            rank = beta = None
            rank_alloc = "uniform"
    if metric not in METRICS:
        problems.append(f"unknown metric '{metric}': use one of {', '.join(METRICS)}")
    elif metric != "alpha" and scheme not in ALPHA_SCHEMES:
        problems.append(f"--metric ranks the matrices of {', '.join(ALPHA_SCHEMES)}; scheme "
                        f"{scheme} " + ("ranks by snr" if scheme == "spectrum"
                                        else "ignores the measurements") + ": drop --metric")
    if fraction is not None and scheme != "spectrum":
        problems.append("--fraction applies to scheme spectrum only")
    elif fraction is not None and (isinstance(fraction, bool) or
                                   not isinstance(fraction, int | float) or
                                   not 0 < fraction <= 1):
        problems.append(f"--fraction {fraction} must lie in (0, 1]: the share of each kind's "
                        "matrices")
    if scheme == "spectrum":
        if k is not None:
            problems.append("scheme spectrum chooses a --fraction of each kind: give "
                            "--fraction (or --budget) instead of --k")
        if fraction is None and budget is None and not has_budget_from:
            problems.append("scheme spectrum needs --fraction (or --budget/--budget-from)")
        if fraction is not None and (budget is not None or has_budget_from):
            problems.append("give --fraction or a budget for scheme spectrum, not both")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
        problems.append(f"--k {k} must be a whole number ≥ 1")
    if scheme == "all" and k is not None:
        problems.append("scheme all takes every candidate: leave out --k")
    if order is not None and order not in ORDERS:
        problems.append(f"unknown order '{order}': use one of {', '.join(ORDERS)}")
    elif order is not None and scheme not in ALPHA_SCHEMES:
        problems.append(f"--order applies to {', '.join(ALPHA_SCHEMES)} only, not {scheme}")
    if unit is not None and unit not in UNITS:
        problems.append(f"unknown unit '{unit}': use one of {', '.join(UNITS)}")
    elif unit is not None and scheme != "random" and unit != SCHEME_UNITS[scheme]:
        problems.append(f"scheme {scheme} chooses by {SCHEME_UNITS[scheme]}; --unit applies "
                        "to scheme random")
    if seed is not None and scheme != "random":
        problems.append("--seed applies to scheme random only")
    elif seed is not None and (int(seed) != seed or seed < 0):
        problems.append(f"--seed {seed} must be a whole number ≥ 0")
    if start is not None and scheme != "band":
        problems.append("--start applies to scheme band only")
    if scheme == "band" and start is None:
        problems.append("scheme band needs --start (the first block of the band)")
    if rank_alloc not in RANK_ALLOCS:
        problems.append(f"unknown rank allocation '{rank_alloc}': use one of "
                        f"{', '.join(RANK_ALLOCS)}")
    elif rank_alloc == "alpha":
        if rank is not None:
            problems.append("--rank sets uniform ranks; --rank-alloc alpha derives them from "
                            "--budget: leave out one of them")
        if budget is None and not has_budget_from:
            problems.append("--rank-alloc alpha needs --budget N or --budget-from PLAN")
        if k is None and scheme != "all":
            problems.append("--rank-alloc alpha needs --k (the budget sets the ranks)")
    elif beta is not None:
        problems.append("--beta applies to --rank-alloc alpha only")
    if rank is not None and (isinstance(rank, bool) or int(rank) != rank or rank < 1):
        problems.append(f"--rank {rank} must be a whole number ≥ 1")
    if budget is not None and has_budget_from:
        problems.append("give --budget or --budget-from, not both")
    if budget is not None and (int(budget) != budget or budget < 1):
        problems.append(f"--budget {budget} must be a whole number ≥ 1")
    if k is None and scheme not in ("all", "spectrum") and budget is None \
            and not has_budget_from:
        problems.append(f"scheme {scheme} needs --k (or --budget/--budget-from to choose it)")
    if problems:
        raise PlanError("; ".join(problems))


def _file_sha256(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_plan(table: pd.DataFrame, scheme: str, k: int | None = None, *,
              order: str | None = None, kinds: str | Iterable[str] | None = None,
              unit: str | None = None, seed: int | None = None, start: int | None = None,
              rank: int | None = None, lora_alpha: float | None = None,
              rank_alloc: str = "uniform", beta: float | None = None,
              budget: int | None = None,
              budget_from: InjectionPlan | str | Path | None = None,
              analysis_path: str | Path | None = None, metric: str = "alpha",
              fraction: float | None = None, method: str = DEFAULT_METHOD) -> InjectionPlan:
    """Choose the modules that train (with a LoRA adapter, and its rank; or with ``method``
    unfreeze, in full) from an alpha table.

    ``k`` counts matrices (alora, random by matrix) or blocks (blora, first, last, band,
    random by block); ``order`` is ``high`` (default: least trained first) or ``low``.
    ``rank`` is the uniform rank (default 8); ``lora_alpha`` defaults to each module's rank
    (scaling 1). With ``rank_alloc="alpha"`` ranks are ∝ alpha^``beta`` under ``budget``.
    ``budget_from`` (a plan or its path) sets the budget to that plan's trainable count; see
    the module docstring for how k or the rank is then chosen. ``metric`` is the table column
    alora and blora rank by (``order`` high: its highest values first). ``spectrum`` takes
    the ``fraction`` of each kind's matrices with the highest SNR (Spectrum's rule), or the
    fraction whose plan meets the budget. ``method`` ``unfreeze`` plans matrices that train in
    full: a matrix costs rows × cols, and there are no ranks (``rank``, ``lora_alpha`` and
    ``rank_alloc`` shape adapters only).
    """
    _check_options(scheme, k, order, unit, seed, start, rank, rank_alloc, beta, budget,
                   budget_from is not None, metric, fraction, method, lora_alpha)
    metric = SPECTRUM_METRIC if scheme == "spectrum" else metric
    kind_list = parse_kinds(kinds)
    frame = candidates(table, kind_list, metric)
    if frame.empty:
        raise PlanError(f"the alpha table has no candidate matrices of kind(s) "
                        f"{', '.join(kind_list)}: choose other --kinds")
    unit = unit or SCHEME_UNITS.get(scheme, "matrix")
    order = (order or "high") if scheme in ALPHA_SCHEMES else order
    beta = (DEFAULT_BETA if beta is None else float(beta)) if rank_alloc == "alpha" else None
    notes: list[str] = []
    if scheme == "random" and seed is None:
        seed = secrets.randbelow(2**31)  # drawn, then recorded, so the plan is reproducible
        notes.append(f"seed {seed} was drawn at random (pass --seed to choose one)")
    units, scores, unit_notes = ranked_units(frame, scheme, unit, order, seed, start, metric)
    notes += unit_notes
    if scheme == "spectrum" and fraction is not None:
        k = spectrum_k(scores, fraction)
        if k == 0:
            raise PlanError(f"--fraction {fraction:g} chooses no matrix: each kind has at most "
                            f"{round(1 / scores[0])} candidates, so raise --fraction to "
                            f"{scores[0]:.3g} or more")
    if not units:
        raise PlanError(f"scheme {scheme} finds no selectable {unit} among the candidates of "
                        f"kind(s) {', '.join(kind_list)}" + (f" ({unit_notes[0]})"
                                                              if unit_notes else ""))
    budget, budget_from_path = _target_budget(budget, budget_from, method)
    costs = rank_step_cost(frame["rows"].to_numpy(), frame["cols"].to_numpy(), method)
    redraws = scheme == "random" and unit == "matrix" and k is None and budget is not None
    closest: BudgetError | None = None
    for draw in range(RANDOM_DRAWS if redraws else 1):
        if draw:
            units, scores, _ = ranked_units(frame, scheme, unit, order, seed, start, metric, draw)
        try:
            taken, uniform_rank = _size(scheme, units, costs, k, rank, rank_alloc, budget, notes,
                                        _what_units_count(scheme, unit, start, metric),
                                        kind_list, unit, ranked=method != UNFREEZE)
            break
        except BudgetError as err:
            if closest is None or abs(err.closest - budget) < abs(closest.closest - budget):
                closest = err
    else:
        assert closest is not None
        if redraws:
            raise BudgetError(f"no draw of seed {seed} meets the budget in {RANDOM_DRAWS} "
                              f"tries: {closest}", closest.closest) from None
        raise closest
    if draw:
        notes.append(f"random: draw {draw + 1} of seed {seed} is the first whose matrices meet "
                     "the budget")
    k = len(taken)
    chosen = sorted(((row, scores[index]) for index in taken for row in units[index]),
                    key=lambda item: int(frame.at[item[0], "position"]))
    rows = [row for row, _ in chosen]
    if rank_alloc == "alpha":
        ranks: list = list(_alpha_ranks(frame.loc[rows], costs[rows], beta, budget, notes))
    else:
        ranks = [uniform_rank] * len(rows)
    if scheme == "spectrum":  # each matrix's own SNR, not the fraction its unit entered at
        chosen = [(row, float(frame.at[row, "score"])) for row, _ in chosen]
        fraction = scores[k - 1]  # the smallest fraction giving this choice
        notes.append(f"spectrum: the top {fraction:.4g} of each kind by snr "
                     f"({len(rows)} matrices)")
    return InjectionPlan(
        modules=_planned_modules(frame, chosen, ranks, lora_alpha), scheme=scheme, k=int(k),
        unit=unit, kinds=kind_list, method=method, order=order, metric=metric,
        fraction=fraction,
        seed=seed, start=start, rank_alloc=rank_alloc,
        beta=beta, budget=budget, budget_from=budget_from_path,
        notes=notes, alphasel_version=__version__, created=utc_now(),
        **_provenance(table, analysis_path))


def _what_units_count(scheme: str, unit: str, start: int | None, metric: str) -> str:
    """What a scheme's k counts, as an error about too large a k names it."""
    value = "an alpha" if metric == "alpha" else f"a {metric}"
    return {"alora": f"candidate matrices with {value}", "blora": f"blocks with {value}",
            "spectrum": "fractions of the kinds",
            "band": f"contiguous blocks from block {start}"}.get(scheme, f"candidate {unit}s")


def _target_budget(budget: int | None, budget_from: InjectionPlan | str | Path | None,
                   method: str) -> tuple[int | None, str | None]:
    """(the trainable-parameter budget, the path of the plan it came from); a plan counted in
    another currency (LoRA parameters for an unfreeze plan, or the reverse) is refused."""
    if budget_from is None:
        return (None if budget is None else int(budget)), None
    path = None
    if isinstance(budget_from, str | Path):
        path, budget_from = str(budget_from), InjectionPlan.load(budget_from)
    if budget_from.unfreezes != (method == UNFREEZE):
        counted = "unfrozen matrices" if budget_from.unfreezes else "LoRA adapters"
        raise PlanError(f"--budget-from {path or 'plan'} counts the parameters of {counted} "
                        f"(method {budget_from.method}), not of --method {method}: give a "
                        f"plan made with the same kind of method, or --budget N")
    return int(budget_from.trainable_params), path


def _size(scheme: str, units: list[list[int]], costs: np.ndarray, k: int | None,
          rank: int | None, rank_alloc: str, budget: int | None, notes: list[str], what: str,
          kinds: list[str], unit: str, ranked: bool = True) -> tuple[list[int], int | None]:
    """The units taken (indices into ``units``, in ranking order), and the uniform rank (None
    for ranks allocated by alpha, and for unfrozen matrices, not ``ranked``): the first k as
    given, every unit for scheme all, or matched to ``budget`` (the module docstring's
    policy)."""
    if scheme == "all":
        k = len(units)
    if k is not None and k > len(units):
        raise PlanError(f"k={k} is larger than the {len(units)} {what} (kinds "
                        f"{', '.join(kinds)}): use --k between 1 and {len(units)}")
    if rank_alloc == "alpha":
        assert k is not None  # _check_options demands k for rank allocation by alpha
        return list(range(k)), None
    if budget is None:
        assert k is not None  # _check_options demands k unless a budget or scheme all sets it
        return list(range(k)), (rank or DEFAULT_RANK) if ranked else None
    taken, rank, note = match_budget(
        np.array([int(costs[rows].sum()) for rows in units]), budget, k, rank, ranked,
        fills=k is None and unit == "matrix" and scheme in FILL_SCHEMES)
    notes.append(note)
    return taken, rank


def _alpha_ranks(picked: pd.DataFrame, costs: np.ndarray, beta: float, budget: int,
                 notes: list[str]) -> np.ndarray:
    """Ranks ∝ alpha^beta of the chosen modules under ``budget`` (:func:`allocate_ranks`)."""
    lacking = picked.loc[~picked["usable"], "name"].tolist()
    if lacking:
        raise PlanError(f"--rank-alloc alpha needs an alpha for every chosen module, but "
                        f"{', '.join(lacking[:5])} have none: use --rank-alloc uniform or "
                        "narrow --kinds")
    ranks = allocate_ranks(picked["alpha"].to_numpy() ** beta, costs,
                           np.minimum(picked["rows"], picked["cols"]).to_numpy(), budget)
    total = int((ranks * costs).sum())
    notes.append(f"ranks ∝ alpha^{beta:g} under budget {budget:,} → {total:,} "
                 f"({(total - budget) / budget:+.2%})")
    return ranks


def _planned_modules(frame: pd.DataFrame, chosen: list[tuple[int, float | None]],
                     ranks: list, lora_alpha: float | None) -> list[PlannedModule]:
    """The chosen rows as plan modules; a rank of None (an unfrozen matrix) has no
    lora_alpha."""
    if lora_alpha is not None and float(lora_alpha) == int(lora_alpha):
        lora_alpha = int(lora_alpha)  # 16, not 16.0, in the plan file and the LoraConfig
    modules = []
    for (row, score), module_rank in zip(chosen, ranks, strict=True):
        item = frame.loc[row]
        modules.append(PlannedModule(
            name=str(item["name"]),
            block=None if pd.isna(item["block"]) else int(item["block"]),
            kind=str(item["kind"]), rows=int(item["rows"]), cols=int(item["cols"]),
            rank=None if module_rank is None else int(module_rank),
            lora_alpha=(None if module_rank is None else
                        int(module_rank) if lora_alpha is None else lora_alpha),
            alpha=float(item["alpha"]) if item["usable"] else None,
            selection_alpha=None if score is None else float(score)))
    return modules


def _provenance(table: pd.DataFrame, analysis_path: str | Path | None) -> dict:
    """The plan's fields that say which analysis of which model it came from."""
    meta = metadata(table)
    analysis = str(analysis_path) if analysis_path is not None else meta.get("path")
    analysed = (pd.to_numeric(table["rows"], errors="coerce").fillna(0)
                * pd.to_numeric(table["cols"], errors="coerce").fillna(0)).sum()
    total_params = meta.get(TOTAL_MATRIX_PARAMS)
    return dict(analysis_path=analysis, analysis_sha256=_file_sha256(analysis),
                model_id=meta.get("model_id"), revision=meta.get("revision"),
                estimator=meta.get("estimator"),
                total_params=int(total_params) if total_params else None,
                analysed_params=int(analysed))
