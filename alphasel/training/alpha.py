"""Alpha across training: the alpha of each adapted module's effective weight, before training
(epoch 0), after every epoch and, with ``--alpha-every N``, every N steps.

Effective weights come from the adapter tensors (:mod:`alphasel.training.effective`), never from
merging into the live model; alpha comes from the analyzer's own per-matrix function with the
estimator and downsampling of the analysis behind the plan, so a row of ``alpha_history.csv``
and a row of the alpha table mean the same thing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import TrainerCallback

from alphasel.analyzer import analyze_matrix
from alphasel.columns import metadata
from alphasel.downsample import NO_DOWNSAMPLING, Downsampling
from alphasel.layout import CANDIDATE_KINDS, block_of, kind_of
from alphasel.plan import InjectionPlan
from alphasel.table import read_table
from alphasel.training.effective import effective_weights
from alphasel.training.history import ALPHA_COLUMNS
from alphasel.training.record import RunWriter


@dataclass(frozen=True)
class AlphaOptions:
    """How alpha is measured: the analysis's estimator and downsampling."""

    estimator: str = "ks"
    downsampling: Downsampling = NO_DOWNSAMPLING
    min_evals: int = 10


def alpha_options(plan: InjectionPlan | None, analysis: pd.DataFrame | None) -> AlphaOptions:
    """The options of the analysis behind the plan: the table given, else the plan's
    analysis file (and its meta.json), else the plan's estimator without downsampling."""
    meta: dict = metadata(analysis) if analysis is not None else {}
    if not meta and plan is not None and plan.analysis_path and Path(plan.analysis_path).is_file():
        try:
            meta = metadata(read_table(plan.analysis_path))
        except ValueError:
            meta = {}
    estimator = meta.get("estimator") or (plan.estimator if plan else None) or "ks"
    downsampling = Downsampling.from_description(meta.get("downsample"))
    return AlphaOptions(estimator, downsampling, int(meta.get("min_evals") or 10))


def measured_modules(model: torch.nn.Module, plan: InjectionPlan | None,
                     remeasure: str) -> tuple[list[str], set[str]]:
    """(modules to measure, modules adapted) in model order. ``adapted``: the plan's modules
    (every candidate for full fine-tuning); ``candidates``: every matrix of the plan's kinds."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = set(plan.kinds) if plan is not None else set(CANDIDATE_KINDS)
    # PEFT's layers expose their base layer's weight; their inner modules (base_layer,
    # lora_A/B) have no kind, so the kind filter leaves them out.
    candidates = [name for name, module in base.named_modules()
                  if name and kind_of(name) in kinds
                  and getattr(getattr(module, "weight", None), "ndim", 0) == 2]
    adapted = set(plan.module_names) if plan is not None else set(candidates)
    if remeasure == "none":
        return [], adapted
    if remeasure == "adapted":
        return [name for name in candidates if name in adapted] + sorted(
            adapted - set(candidates)), adapted
    return candidates, adapted


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights live (its first parameter's device)."""
    return next(model.parameters()).device


def measure(model: torch.nn.Module, names: list[str], adapted: set[str], options: AlphaOptions,
            epoch: float, step: int) -> list[dict[str, Any]]:
    """One alpha_history row per module: its effective weight's fit, computed on the device
    the model lives on (a GPU's eigensolver instead of minutes of the main process's CPU while
    the other ranks wait; downsampled draws are taken on the CPU)."""
    rows = []
    device = model_device(model)
    for name in names:  # one effective weight at a time: a model's worth would not fit beside it
        matrix = effective_weights(model, [name], device=device)[name]
        if device.type == "cpu" or options.downsampling.active:
            matrix = matrix.cpu().numpy()
        row = {"epoch": epoch, "step": step, "name": name, "block": block_of(name),
               "kind": kind_of(name), "adapted": name in adapted}
        if min(matrix.shape) >= options.min_evals:
            row.update(analyze_matrix(matrix, name, options.estimator, str(device),
                                       options.downsampling))
        rows.append({column: row.get(column) for column in ALPHA_COLUMNS})
    return rows


class AlphaCallback(TrainerCallback):
    """Measures alpha at the start (epoch 0), after every epoch and every ``every`` steps;
    the main process appends the rows to alpha_history.csv and the seconds to metrics.jsonl."""

    def __init__(self, names: list[str], adapted: set[str], options: AlphaOptions,
                 every: int | None = None) -> None:
        self.names, self.adapted, self.options, self.every = names, adapted, options, every
        self.writer: RunWriter | None = None
        self.seconds = 0.0
        self.last_rows: list[dict[str, Any]] = []
        self._last_step: int | None = None

    def _measure(self, state: Any, model: torch.nn.Module, epoch: float) -> None:
        if self.writer is None or not self.names or not state.is_world_process_zero:
            return
        if state.global_step == self._last_step:  # an epoch's end is also an Nth step
            return
        self._last_step = state.global_step
        started = time.perf_counter()
        rows = measure(model, self.names, self.adapted, self.options, epoch, state.global_step)
        self.last_rows = rows
        self.writer.append_alpha(rows)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.writer.log_metrics({"step": state.global_step, "epoch": epoch,
                                 "alpha_seconds": round(seconds, 4)})

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       **kwargs: Any) -> None:
        if state.global_step == 0:  # a resumed run has its epoch-0 rows already
            self._measure(state, model, 0)

    def measure_now(self, state: Any, model: torch.nn.Module) -> None:
        """Measure at the current step unless that was done already (re-selection needs it)."""
        # A run stopped by --max-steps ends inside an epoch: label that point by its
        # fractional epoch, never as the whole epoch before it.
        epoch = state.epoch
        self._measure(state, model, round(epoch) if abs(epoch - round(epoch)) < 1e-6
                      else round(epoch, 4))

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None,
                     **kwargs: Any) -> None:
        self.measure_now(state, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None,
                    **kwargs: Any) -> None:
        if self.every and state.global_step % self.every == 0:
            self._measure(state, model, state.epoch)
