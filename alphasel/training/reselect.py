"""Re-selection: after every epoch (``--reselect``) or every N steps (``--reselect-every N``),
fold the adapters into the base weights, re-plan from the alpha of the folded candidates with
the plan's own recipe, and train fresh adapters with a fresh optimizer while the learning rate
continues the run's schedule. With ``--method unfreeze`` there is nothing to fold: the newly
chosen matrices are unfrozen, the dropped ones frozen again with their trained values, and the
optimizer is rebuilt over the new set (Adam's moments restart from zero for every matrix, those
that stay chosen too, as a fresh optimizer per round does in LISA and the original experiments).

How it runs: at a re-selection point the Trainer saves a checkpoint of its own (scheduler, RNG,
state, position in the data) and stops. alphasel folds every adapter (W ← W + ΔW, DoRA's
rescaled weight), re-plans on the main process (every rank receives that plan), injects fresh
adapters, writes them into the checkpoint beside a marker file, and the Trainer resumes from it:
the marker makes it restore the scheduler but not the optimizer, whose state belonged to the
folded adapters. Resuming through the Trainer, instead of swapping parameters inside its loop,
is what wraps the new model in DDP again (parameters added to a live optimizer or a live DDP
never train: the pitfall of LISA re-implementations) and continues the data order exactly.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback

from alphasel.budget import BUDGET_TOLERANCE
from alphasel.columns import META_KEY, TOTAL_MATRIX_PARAMS
from alphasel.errors import PlanError
from alphasel.jsonfiles import write_json
from alphasel.plan import InjectionPlan
from alphasel.planner import make_plan
from alphasel.training.adapters import UNFROZEN_FILE, prepare_model
from alphasel.training.config import TrainConfig
from alphasel.training.distributed import agree, check_same_modules
from alphasel.training.effective import effective_weight
from alphasel.training.record import ADAPTER_DIR, FOLDED_DIR, SELECTIONS_FILE, RunWriter

#: In a checkpoint: its adapters are fresh (re-selected), so the optimizer starts anew.
RESELECTED_MARKER = "alphasel-reselected.json"


def fold_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """Write each adapted module's effective weight into its base layer, remove the adapters
    and return the bare base model (the same module objects, now holding W + ΔW).

    A folded weight is held in float32 from then on (on its own device): it has been trained,
    and ΔW is a fraction of a percent of W, so rounding W + ΔW back into a bf16 base would lose
    about half of the update."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    with torch.no_grad():
        for module in base.modules():
            if isinstance(module, LoraLayer):
                layer = module.get_base_layer()
                folded = effective_weight(module, device=layer.weight.device)
                if layer.weight.dtype == torch.float32:
                    layer.weight.copy_(folded)
                else:
                    layer.weight = torch.nn.Parameter(folded, requires_grad=False)
    return model.unload()


def selection_seed(seed: int | None, round_: int) -> int:
    """The random scheme's seed for selection round ``round_`` (1 = the initial plan): a fresh
    draw per round, reproducible from (plan seed, round)."""
    state = np.random.SeedSequence([int(seed or 0), int(round_)]).generate_state(1)[0]
    return int(state) % 2**31


def candidate_table(rows: list[dict[str, Any]], model: torch.nn.Module,
                    plan: InjectionPlan) -> pd.DataFrame:
    """An alpha table of the measured candidates (the latest alpha_history rows) with their
    shapes read from ``model``, in model order, carrying the plan's model and estimator."""
    table = pd.DataFrame(rows)[["name", "block", "kind", "alpha"]]
    shapes = [tuple(model.get_submodule(name).weight.shape) for name in table["name"]]
    table["rows"] = [shape[0] for shape in shapes]
    table["cols"] = [shape[1] for shape in shapes]
    # The re-planned plans keep the initial plan's model size (its share of the model).
    table.attrs[META_KEY] = {"model_id": plan.model_id, "revision": plan.revision,
                             "estimator": plan.estimator, TOTAL_MATRIX_PARAMS: plan.total_params}
    return table


def _uniform_values(plan: InjectionPlan) -> tuple[int | None, float | None]:
    """The plan's uniform rank and its lora_alpha (None: the planner's default, = rank; both
    None for an unfreeze plan)."""
    rank = Counter(module.rank for module in plan.modules).most_common(1)[0][0]
    alphas = {module.lora_alpha for module in plan.modules}
    if all(module.lora_alpha == module.rank for module in plan.modules):
        return rank, None
    return rank, next(iter(alphas)) if len(alphas) == 1 else None


def replan(plan: InjectionPlan, table: pd.DataFrame, round_: int,
           budget: int) -> InjectionPlan:
    """The plan's recipe (scheme, k, order, kinds, unit, start, ranks, lora_alpha) applied to
    ``table``, held to ``budget`` trainable parameters.

    ``random`` draws from (plan seed, round); by matrix its draw fills the budget (the planner's
    :func:`alphasel.budget.match_budget`) rather than keeping k. With uniform ranks, k and the
    rank are kept when the new choice stays within the planner's 5% of the budget (always so
    for block schemes); otherwise k is re-chosen by the planner's budget matching at the same
    rank. Rank allocation by alpha re-allocates the same budget. An unfreeze plan has no ranks:
    its k alone is kept or re-chosen, in its own currency (rows × cols a matrix). A round no
    choice can hold to the budget within 5% is a PlanError naming the closest.
    """
    recipe: dict[str, Any] = dict(
        order=plan.order, kinds=plan.kinds, start=plan.start, method=plan.method,
        unit=plan.unit if plan.scheme == "random" else None,
        seed=selection_seed(plan.seed, round_) if plan.scheme == "random" else None)
    k = None if plan.scheme == "all" else plan.k
    if plan.rank_alloc == "alpha":
        return make_plan(table, plan.scheme, k, rank_alloc="alpha", beta=plan.beta,
                         budget=budget, **recipe)
    rank, lora_alpha = _uniform_values(plan)
    recipe.update(rank=rank, lora_alpha=lora_alpha)
    draws = plan.scheme == "random" and plan.unit == "matrix"
    if not draws:
        chosen = make_plan(table, plan.scheme, k, **recipe)
        if k is None or abs(chosen.trainable_params - budget) <= BUDGET_TOLERANCE * budget:
            return chosen
    try:
        matched = make_plan(table, plan.scheme, None, budget=budget, **recipe)
    except PlanError as err:
        raise PlanError(f"re-selection round {round_}: no choice of {plan.scheme} holds the "
                        f"budget of {budget:,} trainable parameters within "
                        f"{BUDGET_TOLERANCE:.0%} ({err})") from None
    if draws:
        return matched
    at_rank = "" if plan.unfreezes else f" at rank {rank}"
    note = (f"round {round_}: k={k}{at_rank} would train {chosen.trainable_params:,} "
            f"parameters; k={matched.k} meets the budget {budget:,}")
    return dataclasses.replace(matched, notes=[*matched.notes, note])


class Reselector(TrainerCallback):
    """Stops the Trainer at each re-selection point (after every epoch but the last, or every
    ``every`` steps) with a checkpoint saved, after making sure alpha was measured there."""

    def __init__(self, alpha: Any, every: int | None) -> None:
        self.alpha, self.every = alpha, every
        self.pending: int | None = None
        self.released: set[str] = set()
        """Unfreeze runs: parameters trained in an earlier round and frozen since (their
        trained values are part of what the run trained)."""

    def _stop(self, state: Any, control: Any, model: Any) -> None:
        if state.global_step >= state.max_steps:  # training ends here: nothing to re-select
            return
        self.alpha.measure_now(state, model)
        control.should_save = True
        control.should_training_stop = True
        self.pending = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None,
                    **kwargs: Any) -> None:
        if self.every and state.global_step % self.every == 0:
            self._stop(state, control, model)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None,
                     **kwargs: Any) -> None:
        if not self.every:
            self._stop(state, control, model)


def selection_row(round_: int, plan: InjectionPlan, step: int, epoch: float,
                  previous: InjectionPlan | None, budget: int,
                  seconds: float | None = None) -> dict[str, Any]:
    """A selections.jsonl line: the modules adapted from ``step`` on (during epoch ``epoch``,
    1-based), how many are new, and what they cost."""
    row: dict[str, Any] = {
        "round": round_, "epoch": epoch, "step": step, "modules": plan.module_names,
        "changed": (len(set(plan.module_names) - set(previous.module_names))
                    if previous is not None else None),
        "k": plan.k, "trainable_params": plan.trainable_params, "budget": budget}
    ranks = {module.rank for module in plan.modules}
    if len(ranks) > 1:
        row["ranks"] = {module.name: module.rank for module in plan.modules}
    if plan.scheme == "random":
        row["seed"] = plan.seed
    if plan.notes and previous is not None:
        row["notes"] = [note for note in plan.notes if note.startswith("round ")]
    if seconds is not None:
        row["seconds"] = round(seconds, 3)
    return row


def mark_reselected(checkpoint: Path, model: torch.nn.Module, round_: int) -> None:
    """Put the fresh adapters into the checkpoint the Trainer resumes from, and the marker
    that keeps it from loading the folded adapters' optimizer state. An unfreeze run's
    checkpoint already holds its weights as they are (nothing was folded)."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(checkpoint), save_embedding_layers=False)
    write_json(checkpoint / RESELECTED_MARKER, {"round": round_})


class ContinuesSchedule:
    """Trainer mixin: resuming from a re-selection checkpoint restores the learning-rate
    scheduler (so the schedule continues) and leaves the fresh optimizer as it is."""

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not (Path(checkpoint) / RESELECTED_MARKER).is_file():
            return super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
        from transformers.trainer import SCHEDULER_NAME

        state = torch.load(Path(checkpoint) / SCHEDULER_NAME, map_location="cpu",
                           weights_only=True)
        self.lr_scheduler.load_state_dict(state)
        # The optimizer was built with the peak rate; the step it takes next uses the
        # schedule's current value, as an uninterrupted run would.
        for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr(),
                             strict=False):
            group["lr"] = lr
        return None


def trained_model(base: torch.nn.Module, run_dir: str | Path) -> torch.nn.Module:
    """The model a run trained, rebuilt from its base model (untrained, as the run loaded it):
    each re-selection round's adapter (folded/round-N) folded into the weights in order, then
    the last round's adapter/ on top. A run without re-selection gets its adapter only; an
    ``unfreeze`` run its trained tensors in place of the base's (every other tensor the
    base's own)."""
    from peft import PeftModel

    run = Path(run_dir)
    unfrozen = run / ADAPTER_DIR / UNFROZEN_FILE
    if unfrozen.is_file():  # --method unfreeze: the trained tensors replace the base's
        from safetensors.torch import load_file

        with torch.no_grad():
            for name, tensor in load_file(str(unfrozen)).items():
                parameter = base.get_parameter(name)
                parameter.data = tensor.to(parameter.device)  # float32, as trained
        return base
    rounds = sorted((run / FOLDED_DIR).glob("round-*"),
                    key=lambda folder: int(folder.name.removeprefix("round-")))
    for folder in rounds:
        base = fold_adapters(PeftModel.from_pretrained(base, str(folder)))
    return PeftModel.from_pretrained(base, str(run / ADAPTER_DIR))


def reselection_budget(plan: InjectionPlan) -> int:
    """The trainable-parameter budget every re-selection round is held to."""
    return int(plan.budget or plan.trainable_params)


def run_rounds(trainer: Any, reselector: Reselector, alpha: Any, state: Any,
               writer: RunWriter | None, plan: InjectionPlan, config: TrainConfig) -> float:
    """Re-select every time the Trainer stopped for it, then let it continue; returns the
    seconds spent folding, re-planning and injecting. ``writer`` is None off the main process.

    Each round: the main process saves the round's adapter under folded/round-N, every process
    folds it into its base weights, the main process re-plans from the alpha just measured and
    every process receives that plan (so all ranks adapt the same modules), fresh adapters are
    injected with a seed from (run seed, round), and the Trainer resumes from the checkpoint it
    saved, with a fresh optimizer and the scheduler restored. An unfreeze run folds nothing: the
    new plan's matrices are unfrozen and the rest frozen (the module docstring)."""
    from transformers import set_seed

    total = 0.0
    current, round_ = plan, 1
    budget = reselection_budget(plan)
    while reselector.pending is not None:
        step, reselector.pending = reselector.pending, None
        checkpoint = Path(trainer.args.output_dir) / f"checkpoint-{step}"
        started = time.perf_counter()
        if plan.unfreezes:  # the trained matrices are the weights: nothing to fold
            base = trainer.model
            reselector.released |= {name for name, parameter in base.named_parameters()
                                     if parameter.requires_grad}
        else:
            if writer is not None:
                trainer.model.save_pretrained(str(writer.path / FOLDED_DIR / f"round-{round_}"),
                                              save_embedding_layers=False)
            base = fold_adapters(trainer.model)
        round_ += 1
        # The initial plan is the recipe every round (its k, its seed for random).
        table = candidate_table(alpha.last_rows, base, plan) if writer is not None else None
        chosen = agree(state, lambda table=table, round_=round_: replan(
            plan, table, round_, budget))
        set_seed(config.seed + round_)
        model = prepare_model(base, chosen, config)
        check_same_modules(state, chosen)
        if writer is not None:
            mark_reselected(checkpoint, model, round_)
            seconds = time.perf_counter() - started
            writer.append(SELECTIONS_FILE, selection_row(
                round_, chosen, step, math.floor(trainer.state.epoch + 1e-9) + 1, current,
                budget, seconds))
        alpha.adapted = set(chosen.module_names)
        state.wait_for_everyone()
        total += time.perf_counter() - started
        current = chosen
        trainer.model = trainer.model_wrapped = model
        trainer.optimizer = trainer.lr_scheduler = None
        trainer.args.eval_on_start = False  # the loss was just evaluated at this point
        trainer.train(resume_from_checkpoint=str(checkpoint))
        if writer is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)
    return total
