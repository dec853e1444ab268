"""The model a run trains: loaded, the plan's module names as the model holds them, the plan's
adapters injected (every weight trainable for full fine-tuning), and its parameter counts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alphasel.errors import PlanError, TrainConfigError
from alphasel.layout import kind_of
from alphasel.plan import UNFREEZE, InjectionPlan
from alphasel.training.config import ALSO_PARTS, HEAD_TASKS, TrainConfig
from alphasel.training.models import ModelInfo, load_model, stored_dtype
from alphasel.training.precision import Precision, hold_trainable_in_float32, resolve_precision


def adapter_overrides(config: TrainConfig) -> dict[str, Any]:
    """The LoraConfig fields a run's options decide (the plan decides the rest)."""
    init: bool | str = True if config.lora_init == "default" else config.lora_init
    return {"use_dora": config.method == "dora", "use_rslora": config.method == "rslora",
            "lora_dropout": config.lora_dropout, "init_lora_weights": init,
            "task_type": "SEQ_CLS" if config.task in HEAD_TASKS else "CAUSAL_LM"}


def align_plan(plan: InjectionPlan, model: torch.nn.Module) -> InjectionPlan:
    """The plan with module names as ``model`` holds them.

    A checkpoint's names and a task model's differ by the base model's prefix: MiniLM's
    safetensors say ``encoder.layer.0...`` while ``BertForSequenceClassification`` holds
    ``bert.encoder.layer.0...``. When adding or removing that prefix makes every planned
    module exist, the plan is renamed (and says so); otherwise it is returned as it is, and
    applying it names the missing modules."""
    present = {name for name, _ in model.named_modules()}
    prefix = getattr(model, "base_model_prefix", "") or ""
    if all(module.name in present for module in plan.modules) or not prefix:
        return plan
    for rename in (lambda name: f"{prefix}.{name}",
                   lambda name: name.removeprefix(f"{prefix}.")):
        names = [rename(module.name) for module in plan.modules]
        if all(name in present for name in names):
            modules = [dataclasses.replace(module, name=name)
                       for module, name in zip(plan.modules, names, strict=True)]
            note = (f"module names aligned to the trained model ({plan.modules[0].name} → "
                    f"{names[0]}, base model prefix '{prefix}')")
            return dataclasses.replace(plan, modules=modules, notes=[*plan.notes, note])
    return plan


def prepare_model(model: torch.nn.Module, plan: InjectionPlan | None,
                  config: TrainConfig) -> torch.nn.Module:
    """The model with the plan's adapters (all weights trainable for full fine-tuning), every
    trainable parameter in float32 (see :mod:`alphasel.training.precision`)."""
    if config.method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        hold_trainable_in_float32(model)
        return model
    if plan is None:
        raise TrainConfigError(f"--method {config.method} needs a plan: pass --plan or --scheme")
    if config.method == UNFREEZE:
        unfreeze(model, plan, config.also)
        if config.task in HEAD_TASKS:  # a new head learns, as PEFT's SEQ_CLS adapters do
            for name, parameter in model.named_parameters():
                if name.split(".")[0] in CLASSIFIER_HEADS:
                    parameter.requires_grad_(True)
        hold_trainable_in_float32(model)
        return model
    if config.quantize:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.grad_checkpointing)
    adapted = plan.apply(model, **adapter_overrides(config))
    hold_trainable_in_float32(adapted)
    return adapted


def unfreeze(model: torch.nn.Module, plan: InjectionPlan, also: list[str] = ()) -> None:
    """Every parameter frozen except the plan's matrices and their biases (a block plan names
    every candidate matrix of its blocks) and the ``also`` parts (:func:`part_parameters`),
    which then train in full."""
    present = dict(model.named_modules())
    missing = [module.name for module in plan.modules if module.name not in present]
    if missing:
        raise PlanError(f"the plan names {len(missing)} module(s) the model lacks "
                        f"({', '.join(missing[:3])}): plan from this model's analysis")
    parts = part_parameters(model)
    lacking = [part for part in also if not parts[part]]
    if lacking:
        has = [part for part, parameters in parts.items() if parameters]
        raise TrainConfigError(f"--also {','.join(lacking)}: the model has no such part (it has "
                               f"{', '.join(has) or 'none of them'}): drop it from --also")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module in plan.modules:
        layer = present[module.name]
        for parameter in (layer.weight, getattr(layer, "bias", None)):
            if isinstance(parameter, torch.nn.Parameter):
                parameter.requires_grad_(True)
    for part in also:
        for parameter in parts[part].values():
            parameter.requires_grad_(True)


def also_params(model: torch.nn.Module, also: list[str]) -> int:
    """Parameters of the ``also`` parts (each tensor once: a tied head is the embedding)."""
    parts = part_parameters(model)
    unique = {id(parameter): parameter for part in also for parameter in parts[part].values()}
    return sum(parameter.numel() for parameter in unique.values())


def part_parameters(model: torch.nn.Module) -> dict[str, dict[str, torch.nn.Parameter]]:
    """The parameters of each part --also names, by parameter name: ``embed``, the embedding
    tables (the input embeddings and what the layout calls embed: positions, token types);
    ``head``, the output layer's (a head tied to the embeddings is their one tensor); ``norm``,
    every normalisation layer's (LayerNorm, RMSNorm: a module whose class name ends in Norm)."""
    parts: dict[str, dict[str, torch.nn.Parameter]] = {part: {} for part in ALSO_PARTS}
    owners = {id(parameter): name for name, parameter in model.named_parameters()}
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if module is inputs or (module is not outputs and kind_of(name) == "embed"
                                and isinstance(module, torch.nn.Embedding)):
            part = "embed"
        elif module is outputs:
            part = "head"
        elif type(module).__name__.endswith("Norm"):
            part = "norm"
        else:
            continue
        for parameter in module.parameters(recurse=False):
            parts[part][owners[id(parameter)]] = parameter
    return parts


#: Names transformers' sequence classifiers give their new head (BERT's ``classifier``,
#: Llama's ``score``), which --method unfreeze trains beside the plan's matrices.
CLASSIFIER_HEADS = ("classifier", "score")
#: The file under adapter/ holding an unfreeze run's trained tensors, by their model names.
UNFROZEN_FILE = "unfrozen.safetensors"


def save_trained(trainer: Any, folder: Path, config: TrainConfig, state: Any,
                 released: set[str] | frozenset[str] = frozenset()) -> None:
    """What the run trained, under ``folder`` (adapter/): PEFT's adapter files, every weight
    for full fine-tuning (the Trainer's save), or for ``unfreeze`` only the changed tensors under
    their model names in :data:`UNFROZEN_FILE` (safetensors): those training now and the
    ``released`` ones earlier re-selection rounds trained."""
    if config.method != UNFREEZE:
        trainer.save_model(str(folder))
        return
    if state.is_main_process:
        from safetensors.torch import save_file

        model = trainer.accelerator.unwrap_model(trainer.model)
        tensors = {name: parameter.detach().cpu().contiguous()
                   for name, parameter in model.named_parameters()
                   if parameter.requires_grad or name in released}
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{UNFROZEN_FILE}.partial"
        save_file(tensors, str(partial))
        partial.replace(folder / UNFROZEN_FILE)  # whole or absent
    state.wait_for_everyone()


@dataclass
class TrainableModel:
    """What :func:`trainable_model` hands the trainer."""

    model: torch.nn.Module
    """The model with the plan's adapters (or every weight trainable), trained weights float32."""
    tokenizer: Any
    info: ModelInfo
    plan: InjectionPlan | None
    """The plan with the model's module names and its size."""
    precision: Precision


def trainable_model(model: Any, plan: InjectionPlan | None, labels: list[str] | None,
                    tokenizer: Any, config: TrainConfig, revision: str | None = None
                    ) -> TrainableModel:
    """``model`` loaded as :func:`load_model` loads it (a classifier with a head over
    ``labels``) in the dtypes :func:`resolve_precision` gives, the plan's adapters injected."""
    from transformers import set_seed

    on_gpu = torch.cuda.is_available()
    precision = resolve_precision(config, stored_dtype(model, revision), on_gpu,
                                  bf16_supported=on_gpu and torch.cuda.is_bf16_supported())
    # A classifier's new head is initialised while loading: seeded, so that runs with the same
    # seed start from the same head whatever else ran in the process before (paired design).
    set_seed(config.seed)
    loaded, tokenizer, info = load_model(model, task=config.task, revision=revision,
                                         tokenizer=tokenizer, labels=labels,
                                         quantize=config.quantize, dtype=precision.base_dtype)
    set_seed(config.seed)  # adapter initialisation is part of the paired design
    if plan is not None:
        plan = align_plan(plan, loaded)
    try:
        prepared = prepare_model(loaded, plan, config)
    except PlanError as err:
        raise PlanError(f"{err} (model '{info.model_id}')") from err
    if plan is not None and plan.total_params is None:
        plan = dataclasses.replace(plan, total_params=parameter_counts(prepared)[1])
    return TrainableModel(prepared, tokenizer, info, plan, precision)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; PEFT's count knows 4-bit packing."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    parameters = list(model.parameters())
    return (sum(p.numel() for p in parameters if p.requires_grad),
            sum(p.numel() for p in parameters))
