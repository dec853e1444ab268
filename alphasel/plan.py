"""The injection plan: which modules train (a LoRA adapter each, or the matrix itself in full),
with which rank, and why.

A plan is made by :func:`alphasel.planner.make_plan` from an alpha table, saved as JSON with a
schema version, turned into a ``peft.LoraConfig`` with :meth:`InjectionPlan.to_lora_config`,
and applied with :meth:`InjectionPlan.apply`, which checks that PEFT adapted exactly the
planned modules. A plan's ``method`` says in which currency it counts its trainable parameters
(:func:`parameter_cost`): an adapter's r·(rows + cols), or an unfrozen matrix's rows·cols.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alphasel.atomic import write_text
from alphasel.errors import PlanError
from alphasel.jsonfiles import finite_or_none
from alphasel.paths import model_slug, plans_dir, utc_stamp

if TYPE_CHECKING:
    import peft
    import torch

#: Version of the plan file layout; bump it when a field changes meaning or is removed.
SCHEMA_VERSION = 1

#: LoraConfig fields a plan decides; overriding them would make PEFT adapt something else.
PLAN_OWNED_FIELDS = frozenset({
    "target_modules", "rank_pattern", "alpha_pattern", "r", "lora_alpha", "exclude_modules",
    "layers_to_transform", "layers_pattern", "target_parameters",
})

#: Keys written for readers of the file; recomputed from the modules when loading.
DERIVED_KEYS = ("trainable_params", "trainable_share", "share_of_analysed_params")


#: Methods that put a PEFT adapter on each of a plan's modules.
ADAPTER_METHODS = ("lora", "dora", "rslora")
#: The method that trains a plan's matrices themselves, in full, everything else frozen.
UNFREEZE = "unfreeze"
#: Methods that train a plan's modules: adapters on them, or the matrices themselves.
PLAN_METHODS = (*ADAPTER_METHODS, UNFREEZE)
#: The method a plan is made for when none is named.
DEFAULT_METHOD = "lora"


def lora_parameter_count(rows: int, cols: int, rank: int) -> int:
    """Trainable parameters of a rank-``rank`` LoRA on a ``rows`` × ``cols`` matrix.

    A is rank × cols and B is rows × rank, so the count does not depend on whether the
    checkpoint stores the weight transposed (GPT-2 Conv1D).
    """
    return int(rank) * (int(rows) + int(cols))


def rank_step_cost(rows: Any, cols: Any, method: str) -> Any:
    """What a matrix costs per unit of rank under ``method`` (numbers or numpy arrays): rows +
    cols for an adapter, whose cost is that times its rank; rows × cols for an unfrozen matrix,
    which has no rank (its bias, where it has one, is not part of a plan's budget, nor is
    DoRA's magnitude vector part of an adapter's)."""
    return rows * cols if method == UNFREEZE else rows + cols


def parameter_cost(rows: int, cols: int, rank: int | None, method: str) -> int:
    """What one planned matrix costs in trainable parameters under ``method``:
    :func:`rank_step_cost` times the rank (an unfrozen matrix: once)."""
    return int(rank_step_cost(int(rows), int(cols), method)) * (
        1 if method == UNFREEZE else int(rank))


@dataclass
class PlannedModule:
    """One module the plan trains: with an adapter, or (an unfreeze plan) in full."""

    name: str
    """Full module name as in the model, e.g. ``model.layers.3.self_attn.q_proj``."""
    block: int | None
    """Transformer block index, or None for a module outside the blocks."""
    kind: str
    """Module kind from the alpha table (q, k, v, o, qkv, gate, up, down)."""
    rows: int
    """Rows of the weight as stored in the checkpoint."""
    cols: int
    """Columns of the weight as stored in the checkpoint."""
    rank: int | None
    """LoRA rank r of this module's adapter; None in an unfreeze plan (no adapter)."""
    lora_alpha: float | None
    """LoRA scaling numerator for this module (PEFT scales the update by lora_alpha / r);
    None in an unfreeze plan."""
    alpha: float | None
    """This matrix's fitted power-law alpha, or None when the analysis has no fit for it."""
    selection_alpha: float | None
    """The value that ranked this module when the scheme chose it: its own value of the plan's
    metric (alpha by default) for alora and spectrum, its block's mean for blora, None for
    schemes that ignore the measurements."""


@dataclass
class InjectionPlan:
    """Where LoRA adapters go, their ranks, and what produced the choice."""

    modules: list[PlannedModule]
    """The adapted modules, in the order the model holds them."""
    scheme: str
    """Selection scheme: alora, blora, spectrum, random, first, last, band or all."""
    k: int
    """Number of units chosen (matrices or blocks, see ``unit``)."""
    unit: str
    """What ``k`` counts: ``matrix`` or ``block``."""
    kinds: list[str]
    """Module kinds that were candidates."""
    method: str = DEFAULT_METHOD
    """How the modules train, and so the currency of ``trainable_params`` and ``budget``:
    ``lora``, ``dora``, ``rslora`` (an adapter each, r·(rows + cols)) or ``unfreeze`` (the
    matrix itself, rows·cols)."""
    order: str | None = None
    """``high`` (highest value of ``metric`` first: for alpha the least trained) or ``low``;
    None for schemes that ignore the measurements."""
    metric: str = "alpha"
    """The table column alora/blora rank by (``snr`` for spectrum); each module's
    ``selection_alpha`` holds the value that ranked it."""
    fraction: float | None = None
    """spectrum: the share of each module kind's matrices chosen (highest SNR first)."""
    seed: int | None = None
    """Seed of the random scheme (drawn and recorded when none was given)."""
    start: int | None = None
    """First block of the band scheme."""
    rank_alloc: str = "uniform"
    """``uniform`` (one rank everywhere) or ``alpha`` (rank ∝ alpha^beta under ``budget``)."""
    beta: float | None = None
    """Exponent of the alpha rank allocation."""
    budget: int | None = None
    """Target trainable-parameter count, if the plan was made to meet one."""
    budget_from: str | None = None
    """Path of the plan whose trainable-parameter count was the target."""
    analysis_path: str | None = None
    """The alpha table the plan came from."""
    analysis_sha256: str | None = None
    """SHA-256 of that file's bytes, None for a table that was never on disk."""
    model_id: str | None = None
    """Model the analysis measured."""
    revision: str | None = None
    """Model revision the analysis measured."""
    estimator: str | None = None
    """Power-law estimator of the analysis (ks, median, peak)."""
    total_params: int | None = None
    """Parameters of the whole model, when the analysis recorded it."""
    analysed_params: int = 0
    """Parameters of every matrix in the alpha table (sum of rows × cols)."""
    notes: list[str] = field(default_factory=list)
    """What a reader should know: excluded candidates, budget decisions, drawn seeds."""
    alphasel_version: str = ""
    """alphasel version that made the plan."""
    created: str = ""
    """When the plan was made (UTC, ISO 8601)."""
    schema_version: int = SCHEMA_VERSION
    """Version of this file layout."""

    @property
    def module_names(self) -> list[str]:
        return [module.name for module in self.modules]

    @property
    def unfreezes(self) -> bool:
        """Whether the plan trains its matrices in full (method unfreeze) rather than adapters."""
        return self.method == UNFREEZE

    def module_params(self, module: PlannedModule) -> int:
        """What ``module`` costs in this plan's currency (:func:`parameter_cost`)."""
        return parameter_cost(module.rows, module.cols, module.rank, self.method)

    @property
    def trainable_params(self) -> int:
        """Trainable parameters: Σ r × (rows + cols) over the adapted modules, or Σ rows × cols
        over the unfrozen matrices."""
        return sum(self.module_params(module) for module in self.modules)

    def trained_as(self, method: str) -> InjectionPlan:
        """This plan for a run that trains with ``method``: itself when the currencies agree (a
        LoRA plan trained as DoRA); a LoRA plan made to no budget becomes an unfreeze plan of
        the same matrices. A plan matched to a budget in the other currency, or an unfreeze plan
        asked for adapters, is refused: its size was chosen in other terms."""
        if (method == UNFREEZE) == self.unfreezes:
            return self
        if self.unfreezes:
            raise PlanError(f"the plan unfreezes its matrices (method {UNFREEZE}) and has no "
                            f"ranks for --method {method}: make a plan with --method {method}")
        if self.budget is not None:
            raise PlanError(f"the plan was matched to a budget of {self.budget:,} LoRA "
                            f"parameters, which --method {UNFREEZE} does not count (a matrix "
                            f"costs rows × cols): make the plan with --method {UNFREEZE}")
        modules = [replace(module, rank=None, lora_alpha=None) for module in self.modules]
        note = (f"trained as {UNFREEZE}: the {self.method} plan's matrices in full "
                f"({self.trainable_params:,} LoRA parameters as planned)")
        return replace(self, method=UNFREEZE, modules=modules, notes=[*self.notes, note])

    @property
    def trainable_share(self) -> float | None:
        """Trainable parameters over the whole model's, or None when that total is unknown."""
        if not self.total_params:
            return None
        return self.trainable_params / self.total_params

    @property
    def share_of_analysed_params(self) -> float | None:
        """Trainable parameters over the analysed matrices' (excludes biases and norms)."""
        if not self.analysed_params:
            return None
        return self.trainable_params / self.analysed_params

    # -- files ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["trainable_params"] = self.trainable_params
        data["trainable_share"] = self.trainable_share
        data["share_of_analysed_params"] = self.share_of_analysed_params
        # Version first so a reader sees it before anything it might misread.
        return {"schema_version": data.pop("schema_version"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "plan") -> InjectionPlan:
        if not isinstance(data, dict):
            raise PlanError(f"{source} is not a JSON object: re-create it with `alphasel plan`")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PlanError(f"{source} has schema_version {version!r} but this alphasel reads "
                            f"version {SCHEMA_VERSION}: re-create it with `alphasel plan`")
        data = {key: value for key, value in data.items() if key not in DERIVED_KEYS}
        known = {item.name for item in fields(cls)}
        module_keys = {item.name for item in fields(PlannedModule)}
        unknown = sorted(set(data) - known)
        missing = sorted(name for name in ("modules", "scheme", "k", "unit", "kinds")
                         if name not in data)
        if unknown or missing:
            problems = ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []) + (
                [f"missing field(s) {', '.join(missing)}"] if missing else [])
            raise PlanError(f"{source} has {'; '.join(problems)}: re-create it with "
                            "`alphasel plan`")
        modules = []
        for index, entry in enumerate(data["modules"]):
            if not isinstance(entry, dict) or set(entry) != module_keys:
                raise PlanError(f"{source}: module entry {index} must have exactly the fields "
                                f"{', '.join(sorted(module_keys))}")
            modules.append(PlannedModule(**entry))
        method = data.get("method", DEFAULT_METHOD)
        if method not in PLAN_METHODS:
            raise PlanError(f"{source} has method {method!r}, not one of "
                            f"{', '.join(PLAN_METHODS)}: re-create it with `alphasel plan`")
        if any((module.rank is None) != (method == UNFREEZE) for module in modules):
            raise PlanError(f"{source}: an {UNFREEZE} plan's modules have no rank and every "
                            f"other plan's have one, but this {method} plan's modules disagree: "
                            "re-create it with `alphasel plan`")
        return cls(**{**data, "modules": modules})

    def to_json(self) -> str:
        # JSON has no NaN or inf: a noise-free matrix's snr (inf) is written as null.
        return json.dumps(finite_or_none(self.to_dict()), indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> InjectionPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PlanError(f"{source} is not valid JSON ({err}): re-create it with "
                            "`alphasel plan`") from err
        return cls.from_dict(data, source=source)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON; a temporary file is renamed so no partial file remains."""
        path = Path(path)
        text = self.to_json()
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> InjectionPlan:
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file '{path}' does not exist: make one with `alphasel plan`")
        return cls.from_json(path.read_text(), source=f"plan file '{path}'")

    # -- PEFT ----------------------------------------------------------------------------------

    def to_lora_config(self, **overrides: Any) -> peft.LoraConfig:
        """A ``peft.LoraConfig`` that targets exactly this plan's modules.

        Targets are full module names, so PEFT's suffix matching cannot reach a module in
        another block. Ranks and lora_alpha that differ from the most common value go into
        ``rank_pattern`` / ``alpha_pattern``, keyed by the escaped full name: PEFT matches those
        keys as ``(.*\\.)?(KEY)$``, so ``model\\.layers\\.1\\.…`` cannot match layer 11.
        ``overrides`` set any other LoraConfig field (dropout, task_type, use_dora, ...).
        """
        from peft import LoraConfig

        if not self.modules:
            raise PlanError("the plan has no modules: make a plan that selects at least one")
        if self.unfreezes:
            raise PlanError(f"the plan trains its matrices in full (method {UNFREEZE}): it has "
                            "no adapters for a LoraConfig; make the plan with --method lora")
        owned = sorted(set(overrides) & PLAN_OWNED_FIELDS)
        if owned:
            raise PlanError(f"to_lora_config cannot override {', '.join(owned)}: the plan "
                            "decides them; make a new plan with other --rank/--lora-alpha/--k")
        rank = Counter(module.rank for module in self.modules).most_common(1)[0][0]
        lora_alpha = Counter(module.lora_alpha for module in self.modules).most_common(1)[0][0]
        rank_pattern = {re.escape(m.name): m.rank for m in self.modules if m.rank != rank}
        alpha_pattern = {re.escape(m.name): m.lora_alpha for m in self.modules
                         if m.lora_alpha != lora_alpha}
        try:
            return LoraConfig(target_modules=list(self.module_names), r=rank,
                              lora_alpha=lora_alpha, rank_pattern=rank_pattern,
                              alpha_pattern=alpha_pattern, **overrides)
        except (TypeError, ValueError) as err:
            raise PlanError(f"cannot build a LoraConfig with overrides {overrides}: {err}") from err

    def apply(self, model: torch.nn.Module, adapter_name: str = "default",
              **overrides: Any) -> peft.PeftModel:
        """Inject the plan's adapters into ``model`` and check PEFT adapted exactly them.

        Raises :class:`PlanError` if the model lacks a planned module, or if after injection
        the adapted modules, their ranks, lora_alpha or parameter counts differ from the plan.
        PEFT modifies ``model`` in place; after an error, discard it.
        """
        from peft import get_peft_model

        present = {name for name, _ in model.named_modules()}
        missing = [name for name in self.module_names if name not in present]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more"
                                              if len(missing) > 5 else "")
            raise PlanError(f"the model lacks {len(missing)} of the plan's {len(self.modules)} "
                            f"module(s) ({shown}): apply the plan to the model it was made for "
                            f"({self.model_id or 'see the plan file'})")
        config = self.to_lora_config(**overrides)
        try:
            peft_model = get_peft_model(model, config, adapter_name=adapter_name)
        except (ValueError, TypeError) as err:  # PEFT raises TypeError for some inits
            raise PlanError(f"PEFT could not inject the plan's adapters: {err}") from err
        check_adapted(self, peft_model, adapter_name)
        return peft_model


def adapted_modules(peft_model: torch.nn.Module, adapter_name: str = "default") -> dict[str, Any]:
    """Module name (as in the base model) → LoRA layer, for every layer holding ``adapter_name``."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    return {name: module for name, module in base.named_modules()
            if isinstance(module, LoraLayer) and adapter_name in module.r}


def _lora_numel(layer: Any, adapter_name: str) -> int:
    # Only A and B: DoRA's magnitude vector is extra and not part of the plan's count.
    return sum(parameter.numel()
               for container in (layer.lora_A, layer.lora_B) if adapter_name in container
               for parameter in container[adapter_name].parameters())


def check_adapted(plan: InjectionPlan, peft_model: torch.nn.Module,
                  adapter_name: str = "default") -> None:
    """Raise :class:`PlanError` unless PEFT adapted exactly the plan's modules, as planned."""
    layers = adapted_modules(peft_model, adapter_name)
    planned = {module.name: module for module in plan.modules}
    extra = sorted(set(layers) - set(planned))
    absent = sorted(set(planned) - set(layers))
    problems = []
    if extra:
        problems.append(f"adapted modules not in the plan: {', '.join(extra[:5])}"
                        + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
    if absent:
        problems.append(f"planned modules not adapted: {', '.join(absent[:5])}"
                        + (f" and {len(absent) - 5} more" if len(absent) > 5 else ""))
    for name in sorted(set(planned) & set(layers)):
        module, layer = planned[name], layers[name]
        if layer.r[adapter_name] != module.rank:
            problems.append(f"{name} has rank {layer.r[adapter_name]}, planned {module.rank}")
        if layer.lora_alpha[adapter_name] != module.lora_alpha:
            problems.append(f"{name} has lora_alpha {layer.lora_alpha[adapter_name]}, "
                            f"planned {module.lora_alpha}")
        numel, planned_numel = _lora_numel(layer, adapter_name), plan.module_params(module)
        if numel != planned_numel:
            problems.append(f"{name} has {numel} LoRA parameters, planned "
                            f"{planned_numel} (shape {module.rows}x{module.cols} "
                            "in the analysis differs from the model's)")
    if problems:
        raise PlanError("PEFT did not adapt the model as planned: " + "; ".join(problems)
                        + ": apply the plan to the model it was made for")


def default_plan_path(plan: InjectionPlan) -> Path:
    """``runs/plans/<model>-<scheme>-k<k>-<time>.json``: unique per call, sortable by time."""
    model = model_slug(plan.model_id) if plan.model_id else "model"
    return plans_dir() / f"{model}-{plan.scheme}-k{plan.k}-{utc_stamp()}.json"
