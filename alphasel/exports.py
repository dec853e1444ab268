"""Plans that leave alphasel: a plan's modules, ranks and lora_alpha in the terms of the tool
that trains them.

- ``peft``: a ``peft.LoraConfig`` as JSON (``LoraConfig(**json.load(file))``, or the file saved
  as ``adapter_config.json`` for ``LoraConfig.from_pretrained(folder)``).
- ``axolotl``: a YAML fragment to paste into an axolotl config (``adapter: lora``, ``lora_r``,
  ``lora_alpha``, ``lora_target_modules`` and the per-module patterns; for an unfreeze plan,
  ``unfrozen_parameters``).
- ``regex``: one pattern per line, ``^name$`` with the name escaped: each fullmatches exactly
  one module name (a plan with per-module ranks is refused: the lines cannot carry them).

Every export names modules by their full names as the analysis (the checkpoint) holds them, and
the LoRA exports are :meth:`InjectionPlan.to_lora_config`'s own fields, so alphasel, PEFT and
axolotl read one rule: PEFT adapts a module whose name equals a target or ends with "." and the
target, and takes a ``rank_pattern``/``alpha_pattern`` key (an escaped full name) as a regex it
matches as ``(.*\\.)?(KEY)$`` against the module name (peft/tuners/tuners_utils.py
``check_target_module_exists``, peft/utils/other.py ``get_pattern_key``). axolotl hands its
``lora_*`` fields to that LoraConfig unchanged (src/axolotl/loaders/adapter.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alphasel.atomic import write_text
from alphasel.errors import PlanError
from alphasel.plan import InjectionPlan

#: The first axolotl release that passes ``lora_rank_pattern`` / ``lora_alpha_pattern`` on to
#: PEFT; older releases drop unknown config keys without a word and train every module at
#: ``lora_r``.
AXOLOTL_PATTERNS_SINCE = "0.18.0"


def _number(value: float) -> int | float:
    """16, not 16.0: the plan's lora_alpha as the integer it usually is."""
    return int(value) if float(value).is_integer() else value


def peft_config_dict(plan: InjectionPlan) -> dict[str, Any]:
    """The fields of ``plan.to_lora_config()`` the plan decides, as JSON-ready values.

    ``target_modules`` lists the full names in the plan's order; other LoraConfig fields
    (task_type, lora_dropout, use_dora, ...) are the reader's to add. An unfreeze plan has no
    adapters to configure and is refused.
    """
    if plan.unfreezes:
        raise PlanError("a LoraConfig configures adapters, and this plan trains its matrices in "
                        "full (method unfreeze): use --export axolotl (unfrozen_parameters) or "
                        "--export regex")
    config = plan.to_lora_config()
    order = {name: index for index, name in enumerate(plan.module_names)}
    return {
        "peft_type": config.peft_type.value,
        "r": config.r,
        "lora_alpha": _number(config.lora_alpha),
        "target_modules": sorted(config.target_modules, key=order.__getitem__),
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": {key: _number(value) for key, value in config.alpha_pattern.items()},
    }


def peft_json(plan: InjectionPlan) -> str:
    """The plan as a LoraConfig JSON file (see :func:`peft_config_dict`)."""
    return json.dumps(peft_config_dict(plan), indent=1) + "\n"


def _yaml_string(text: str) -> str:
    # A JSON string is a YAML double-quoted scalar: backslashes and quotes stay as written.
    return json.dumps(text)


def _provenance(plan: InjectionPlan) -> list[str]:
    sizes = "unfrozen in full" if plan.unfreezes else f"ranks {plan.rank_alloc}"
    return [f"# alphasel {plan.alphasel_version or '?'} plan: scheme {plan.scheme}, k {plan.k} "
            f"({plan.unit}), {sizes}, {len(plan.modules)} modules, "
            f"{plan.trainable_params:,} trainable parameters",
            f"# model {plan.model_id or '?'}, analysis {plan.analysis_path or 'in memory'}"]


def axolotl_yaml(plan: InjectionPlan) -> str:
    """A YAML fragment for an axolotl config that adapts exactly the plan's modules.

    axolotl types ``lora_alpha`` and ``lora_alpha_pattern`` values as integers, so a plan with
    a fractional lora_alpha is refused (the peft export can carry it). An unfreeze plan becomes
    ``unfrozen_parameters`` (:func:`axolotl_unfrozen`) and no adapter.
    """
    if plan.unfreezes:
        return "\n".join([
            *_provenance(plan),
            "# No adapter: axolotl trains these parameters of the model in full, all others "
            "frozen.", "unfrozen_parameters:",
            *(f"  - {_yaml_string(pattern)}" for pattern in axolotl_unfrozen(plan))]) + "\n"
    config = peft_config_dict(plan)
    fractional = [module for module in plan.modules if not float(module.lora_alpha).is_integer()]
    if fractional:
        raise PlanError(f"axolotl takes integer lora_alpha only, and {fractional[0].name} has "
                        f"lora_alpha {fractional[0].lora_alpha}: use --export peft, or make the "
                        "plan with an integer --lora-alpha")
    lines = [*_provenance(plan),
             "# lora_target_linear must stay unset: it would add every linear layer.",
             "adapter: lora",
             f"lora_r: {config['r']}",
             f"lora_alpha: {config['lora_alpha']}",
             "lora_target_modules:",
             *(f"  - {_yaml_string(name)}" for name in config["target_modules"])]
    for field in ("rank_pattern", "alpha_pattern"):
        if config[field]:
            lines.append(f"lora_{field}:  # needs axolotl >= {AXOLOTL_PATTERNS_SINCE}; older "
                         "versions ignore it silently")
            lines.extend(f"  {_yaml_string(key)}: {value}"
                         for key, value in config[field].items())
    return "\n".join(lines) + "\n"


def axolotl_unfrozen(plan: InjectionPlan) -> list[str]:
    """axolotl ``unfrozen_parameters`` that leave exactly what ``--method unfreeze`` trains of
    the plan trainable: each module's weight and, where it has one, its bias.

    axolotl (src/axolotl/utils/freeze.py) reads each entry as a regex in which every "." not
    followed by "+" is a literal dot, takes a trailing ``[start:end]`` as an index range, and
    keeps a parameter trainable when the regex ``re.match``-es its name (anchored at the start
    only). So each entry is ``^`` + the module name with its dots left plain and every other
    special character escaped + ``.(weight|bias)$``. The names are the checkpoint's
    (``model.layers.3.mlp.up_proj.weight``), the names axolotl's ``AutoModelForCausalLM`` holds.
    """
    return ["^" + ".".join(re.escape(part) for part in module.name.split("."))
            + ".(weight|bias)$" for module in plan.modules]


def module_regexes(plan: InjectionPlan) -> list[str]:
    """One ``^name$`` per planned module, the name escaped: each selects that module only."""
    return [f"^{re.escape(name)}$" for name in plan.module_names]


def regex_lines(plan: InjectionPlan) -> str:
    """The plan's :func:`module_regexes`, one a line. Patterns name modules, not ranks: a plan
    whose adapters differ in rank or lora_alpha is refused (its sizes would be lost)."""
    if len({(module.rank, module.lora_alpha) for module in plan.modules}) > 1:
        raise PlanError("the plan gives its modules different ranks or lora_alpha, which one "
                        "pattern per line cannot carry: use --export peft (rank_pattern, "
                        "alpha_pattern) or --export axolotl")
    return "".join(f"{pattern}\n" for pattern in module_regexes(plan))


#: Export name → the function that renders a plan as that file's text.
EXPORTS: dict[str, Callable[[InjectionPlan], str]] = {
    "peft": peft_json,
    "axolotl": axolotl_yaml,
    "regex": regex_lines,
}


def check_export(export: str) -> None:
    """Raise :class:`PlanError` unless ``export`` names one of :data:`EXPORTS`."""
    if export not in EXPORTS:
        raise PlanError(f"unknown export '{export}': choose one of {', '.join(EXPORTS)}")


def export_text(plan: InjectionPlan, export: str) -> str:
    """The plan rendered as ``export`` (one of :data:`EXPORTS`)."""
    check_export(export)
    if not plan.modules:
        raise PlanError("the plan has no modules: make a plan that selects at least one")
    return EXPORTS[export](plan)


def write_export(plan: InjectionPlan, export: str, path: str | Path) -> Path:
    """Write the plan as ``export`` to ``path``, whole or not at all; a plan the tool cannot
    express raises before anything is written."""
    path = Path(path)
    text = export_text(plan, export)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, text)
