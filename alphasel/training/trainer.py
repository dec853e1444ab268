"""TRAIN: fine-tune an injection plan (or every weight) and record the run.

    record = alphasel.train("smollm2", "runs/plans/smollm2-blora-k8.json", "stdlib-code",
                            TrainConfig(epochs=3))

The loop, logging, evaluation, checkpoints and multi-process training are transformers'
``Trainer`` (TRL's ``SFTTrainer`` for language models: it tokenizes instruction data, appends
EOS and masks the prompt from the loss). alphasel adds the model/plan/data plumbing and the run
record. Launched by ``torchrun`` or ``accelerate launch``, every process runs this same code;
only the main process writes the record. :func:`train` reads as its phases: check the inputs,
load the data and the model with its adapters, open the run, build the Trainer, start the
record, train (with the re-selection rounds), finish the record.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from alphasel.errors import RunError, TrainConfigError
from alphasel.jsonfiles import read_jsonl
from alphasel.plan import PLAN_METHODS, InjectionPlan
from alphasel.training.adapters import (
    TrainableModel,
    also_params,
    parameter_counts,
    save_trained,
    trainable_model,
)
from alphasel.training.alpha import AlphaCallback, alpha_options, measured_modules
from alphasel.training.builder import build_trainer, check_reporters
from alphasel.training.callbacks import MetricsCallback, peak_memory, start_memory_tracking
from alphasel.training.config import HEAD_TASKS, TrainConfig
from alphasel.training.console import library_output
from alphasel.training.data import TrainData, tokenizer_and_data
from alphasel.training.distributed import agree, check_same_modules, start_process
from alphasel.training.generations import format_prompt, read_prompts, record_generations
from alphasel.training.harness import check_harness, evaluate_harness
from alphasel.training.harness import flat as harness_columns
from alphasel.training.memory import MemoryCallback
from alphasel.training.models import ModelInfo
from alphasel.training.precision import Precision
from alphasel.training.provenance import config_record
from alphasel.training.record import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    GENERATIONS_FILE,
    METRICS_FILE,
    SELECTIONS_FILE,
    TENSORBOARD_DIR,
    RunRecord,
    RunWriter,
    last_checkpoint,
    run_directory,
)
from alphasel.training.reselect import Reselector, reselection_budget, run_rounds, selection_row
from alphasel.training.summary import run_summary
from alphasel.training.task_metrics import HARNESS_SECONDS, PredictionMetrics, headline_metric


@dataclass
class _Run:
    """What the phases of one training run hand on to each other."""

    config: TrainConfig
    state: Any
    """accelerate's process state (one process, or this rank of several)."""
    plan: InjectionPlan | None
    data: TrainData
    tokenizer: Any
    info: ModelInfo
    model: torch.nn.Module
    """The model as it trains: the plan's adapters injected (or every weight trainable)."""
    precision: Precision
    path: Path
    resumed: bool
    checkpoint: str | None
    resumed_step: int
    metrics: MetricsCallback
    alpha: AlphaCallback
    reselector: Reselector | None
    memory: MemoryCallback
    counts: tuple[int, int]
    """(trainable, total) parameters of the model as it starts training."""
    harness: dict[str, Any] = dataclasses.field(default_factory=dict)
    """lm-evaluation-harness results, ``before`` and ``after`` training."""
    trainer: Any = None
    writer: RunWriter | None = None
    """The run directory's writer, on the main process only."""


def train(model: str | Path | torch.nn.Module, plan: InjectionPlan | str | Path | None = None,
          data: str | TrainData = "stdlib-code", config: TrainConfig | None = None, *,
          tokenizer: Any = None, revision: str | None = None, out: str | Path | None = None,
          overwrite: bool = False, resume: str | Path | None = None,
          analysis: pd.DataFrame | None = None, prompts: str | Path | list[str] | None = None,
          callbacks: list | None = None, progress: bool = True, verbose: bool = False,
          command: list[str] | None = None) -> RunRecord:
    """Fine-tune ``model`` with ``plan``'s adapters (``plan=None`` with ``method="full"`` trains
    every weight) on ``data`` and write the run record; returns it.

    ``model`` is what ``alphasel analyze`` takes (hub id, checkpoint dir, .gguf, ``smollm2``,
    ``minilm``) or an in-memory module with its ``tokenizer``. ``data`` is a built-in name,
    file, directory or hub dataset id (see :func:`alphasel.training.data.load_data`). The record
    goes to ``out`` (default ``runs/train/<run-id>/``); ``resume`` continues an interrupted
    run in place from its last checkpoint. ``analysis`` is stored beside an inline plan;
    ``callbacks`` are extra transformers ``TrainerCallback``s. ``progress`` shows a bar for
    training; ``verbose`` also the libraries' own output (see :mod:`alphasel.training.console`).
    Nothing is written until the model, plan and data have been checked and the trainer is
    built.
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    plan = _checked_inputs(plan, config, resume)
    prompt_list = read_prompts(prompts) if isinstance(prompts, str | Path) else prompts
    with library_output(verbose):
        state = start_process(config)
        tokenizer, data = tokenizer_and_data(model, tokenizer, data, config, revision)
        loaded = trainable_model(model, plan, data.labels, tokenizer, config, revision)
        if loaded.plan is not None:
            check_same_modules(state, loaded.plan)
        run = _open_run(state, config, loaded, data, out, resume, overwrite, analysis)
        _build(run, callbacks, progress)
        _start_record(run, config_record(model, revision, loaded.info, data, run.plan, config,
                                         command, state.num_processes, prompt_list,
                                         loaded.precision), analysis, overwrite)
        prompt_texts = _prompt_texts(run, prompt_list)
        _generate(run, "before", prompt_texts)
        _benchmark(run, "before")
        reselect_seconds = _fit(run)
        memory = peak_memory()
        if config.save_adapter:
            save_trained(run.trainer, run.path / ADAPTER_DIR, config, run.state,
                         run.reselector.released if run.reselector else frozenset())
        _generate(run, "after", prompt_texts)
        _benchmark(run, "after")
        if run.writer is not None:
            _finish_record(run, memory, started, reselect_seconds)
        state.wait_for_everyone()
        return RunRecord.load(run.path)


def _checked_inputs(plan: InjectionPlan | str | Path | None, config: TrainConfig,
                    resume: str | Path | None) -> InjectionPlan | None:
    """The plan (read from its file), once the plan, method, resume and reporters agree."""
    if isinstance(plan, str | Path):
        plan = InjectionPlan.load(plan)
    if config.method == "full" and plan is not None:
        raise TrainConfigError("--method full trains every weight; it takes no plan: drop "
                               "--plan/--scheme, or choose --method lora, dora, rslora or "
                               "unfreeze")
    if config.method in PLAN_METHODS and plan is None:
        raise TrainConfigError(f"--method {config.method} needs a plan: pass --plan FILE or "
                               "--scheme/--k to plan inline (or --method full)")
    if plan is not None:
        plan = plan.trained_as(config.method)
    if plan is not None and config.reselecting and plan.metric != "alpha":
        raise TrainConfigError(f"--reselect re-ranks by the alpha it measures during training; "
                               f"this plan ranks by {plan.metric} (scheme {plan.scheme}), which "
                               "is not re-measured yet: drop --reselect, or plan by alpha")
    if resume is not None and config.reselecting:
        raise RunError(f"--resume '{resume}': the run re-selects its modules, and re-selecting "
                       "runs cannot be resumed yet (no checkpoint holds the folded base "
                       "weights): start it again")
    check_reporters(config)
    check_harness(config.eval_harness, config.eval_harness_include, config.eval_fraction)
    return plan


def _open_run(state: Any, config: TrainConfig, loaded: TrainableModel, data: TrainData,
              out: str | Path | None, resume: str | Path | None, overwrite: bool,
              analysis: pd.DataFrame | None) -> _Run:
    """The run's directory (agreed by every process, checked before anything is written) and
    the callbacks that observe it; a resumed run continues from its last checkpoint."""
    plan, model = loaded.plan, loaded.model
    label = config.method if plan is None else f"{plan.scheme}-k{plan.k}-{config.method}"
    path = agree(state, lambda: run_directory(out, resume, overwrite, loaded.info.model_id,
                                              label, data.name, data.fingerprint,
                                              state.num_processes))
    checkpoint, resumed_step = last_checkpoint(path / CHECKPOINTS_DIR) if resume else (None, 0)
    # Re-selection re-plans from every candidate, so it measures them all.
    names, adapted = measured_modules(model, plan, "candidates" if config.reselecting
                                      else config.remeasure)
    alpha = AlphaCallback(names, adapted, alpha_options(plan, analysis), config.alpha_every)
    reselector = Reselector(alpha, config.reselect_every) if config.reselecting else None
    return _Run(config, state, plan, data, loaded.tokenizer, loaded.info, model,
                loaded.precision, path, resume is not None, checkpoint, resumed_step,
                MetricsCallback(None), alpha, reselector, MemoryCallback(),
                parameter_counts(model))


def _build(run: _Run, callbacks: list | None, progress: bool) -> None:
    """The Trainer (TensorBoard logs into the run); a failure leaves no folder behind."""
    existed = run.path.exists()
    recorded = [row for row in read_jsonl(run.path / METRICS_FILE)
                if row.get("step", 0) <= run.resumed_step] if run.resumed else []
    own = [run.metrics, run.alpha, run.memory, *([run.reselector] if run.reselector else [])]
    try:
        run.trainer = build_trainer(
            run.model, run.tokenizer, run.data, run.config, run.path / CHECKPOINTS_DIR,
            [*own, *(callbacks or [])], progress,
            evaluate_first=not any(row.get("step") == 0 and "eval_loss" in row
                                   for row in recorded),
            tensorboard_dir=run.path / TENSORBOARD_DIR, autocast=run.precision.autocast)
    except BaseException:
        if run.state.is_main_process and not existed:
            _remove_if_empty(run.path)  # the Trainer made empty folders; leave nothing behind
        raise


def _remove_if_empty(path: Path) -> None:
    if path.is_dir() and not any(item.is_file() for item in path.rglob("*")):
        shutil.rmtree(path, ignore_errors=True)


def _start_record(run: _Run, config: dict[str, Any], analysis: pd.DataFrame | None,
                  overwrite: bool) -> None:
    """Open the run directory on the main process: a new run's config, plan, analysis and first
    selection; a resumed run's metrics and alpha cut back to its checkpoint."""
    writer = agree(run.state, lambda: RunWriter.reopen(run.path) if run.resumed
                   else RunWriter.create(run.path, overwrite=overwrite))
    if not run.state.is_main_process:
        return
    run.writer = run.metrics.writer = run.alpha.writer = writer
    if run.resumed:
        writer.keep_metrics_through(run.resumed_step)
        writer.keep_alpha_through(run.resumed_step)
        return
    writer.write_config(config)
    if run.plan is not None:
        writer.write_plan(run.plan)
    if analysis is not None:
        writer.write_analysis(analysis)
    if run.reselector is not None and run.plan is not None:
        writer.append(SELECTIONS_FILE, selection_row(1, run.plan, 0, 1, None,
                                                     reselection_budget(run.plan)))


def _prompt_texts(run: _Run, prompts: list[str] | None) -> list[str]:
    """The prompts of generations.jsonl as the model sees them (none for classifiers, or when
    generations are off)."""
    if run.data.kind in HEAD_TASKS or not run.config.generate:
        return []
    return [format_prompt(prompt, run.data.kind, run.config.template, run.tokenizer)
            for prompt in (prompts or run.data.prompts)]


def _generate(run: _Run, when: str, prompts: list[str]) -> None:
    """Greedy completions ``before`` or ``after`` training (a resumed run has its "before")."""
    if prompts and run.writer is not None and not (when == "before" and any(
            row.get("when") == "before" for row in read_jsonl(run.path / GENERATIONS_FILE))):
        # TRL tokenizes Alpaca prompts with the tokenizer's special tokens (BOS); chat
        # templates and code chunks carry their own.
        special = run.data.kind == "instruction" and run.config.template == "alpaca"
        record_generations(run.writer, when, run.trainer.model, run.tokenizer, prompts,
                           run.config.max_new_tokens, special, run.precision.autocast_dtype)
    if when == "before":
        run.state.wait_for_everyone()


def _benchmark(run: _Run, when: str) -> None:
    """lm-evaluation-harness on the model as it is, ``before`` or ``after`` training, on the
    main process (a resumed run has its "before"): each task's metrics go to metrics.jsonl at
    this step, and with their seconds to the run (summary.json keeps the final ones)."""
    config = run.config
    if not config.eval_harness:
        return
    if run.writer is None or (when == "before" and run.resumed):
        run.state.wait_for_everyone()  # the other ranks wait for the main process's harness
        return
    results, seconds = evaluate_harness(
        run.trainer.model, run.tokenizer, config.eval_harness, limit=config.eval_harness_limit,
        fewshot=config.eval_harness_fewshot, include=config.eval_harness_include,
        batch_size=config.batch_size, eval_fraction=config.eval_fraction,
        autocast=run.precision.autocast_dtype)
    run.harness[when] = {"results": results, "seconds": round(seconds, 3)}
    run.writer.log_metrics({"step": run.trainer.state.global_step, "epoch":
                            run.trainer.state.epoch or 0.0, HARNESS_SECONDS: round(seconds, 3),
                            **harness_columns(results)})
    run.state.wait_for_everyone()


def _fit(run: _Run) -> float:
    """Train (resuming from the checkpoint, if any), run the re-selection rounds and evaluate
    the final weights; returns the seconds the re-selections took."""
    start_memory_tracking()
    run.trainer.train(resume_from_checkpoint=run.checkpoint)
    seconds = 0.0
    if run.reselector is not None and run.plan is not None:
        seconds = run_rounds(run.trainer, run.reselector, run.alpha, run.state, run.writer,
                             run.plan, run.config)
    step = run.trainer.state.global_step
    if not any("eval_loss" in entry and entry.get("step") == step
               for entry in run.trainer.state.log_history):  # the same answer on every rank
        run.trainer.evaluate()  # the final eval loss belongs to the final weights
    run.state.wait_for_everyone()
    _check_finite_loss(run)
    return seconds


def _check_finite_loss(run: _Run) -> None:
    """A run whose final eval loss is NaN or inf diverged: it fails instead of recording null
    (half precision overflows are the usual cause)."""
    losses = [entry["eval_loss"] for entry in run.trainer.state.log_history
              if "eval_loss" in entry]
    if losses and not math.isfinite(losses[-1]):
        hint = ("float16 overflows here: use --bf16, or --dtype float32 without --fp16"
                if run.precision.autocast == "fp16" else "lower --lr")
        raise RunError(f"training diverged: the eval loss at step "
                       f"{run.trainer.state.global_step} is {losses[-1]} ({hint})")


def _finish_record(run: _Run, memory: dict, started: float, reselect_seconds: float) -> None:
    """summary.json, written last; the Trainer's empty checkpoint folder removed first."""
    checkpoints = run.path / CHECKPOINTS_DIR
    if checkpoints.is_dir() and not any(item.name.startswith("checkpoint-")
                                        for item in checkpoints.iterdir()):
        # The Trainer makes it even when nothing is saved (and TRL leaves a model card in
        # it when a re-selection checkpoint was saved and consumed).
        shutil.rmtree(checkpoints)
    summary = run_summary(run.path, run.trainer, run.metrics, memory, run.counts, started,
                          run.resumed_step if run.resumed else None, run.state.num_processes)
    summary["alpha_seconds"] = round(run.alpha.seconds, 3)
    summary["headline_metric"] = headline_metric(run.config.task,
                                                 run.data.details.get("config"))
    summary["memory_breakdown"] = run.memory.breakdown(memory)
    if run.harness:
        summary.update(harness_columns(run.harness.get("after", {}).get("results", {})))
        summary["harness"] = run.harness
    rows = _prediction_rows(run)
    if rows:
        run.writer.write_predictions(rows)
    if run.config.also:  # trained beside the plan's matrices, counted in trainable_params
        summary["also_params"] = also_params(run.trainer.model, run.config.also)
    if run.reselector is not None:
        summary["rounds"] = len(read_jsonl(run.path / SELECTIONS_FILE))
        summary["reselect_seconds"] = round(reselect_seconds, 3)
        summary["trainable_params"] = parameter_counts(run.trainer.model)[0]  # the last round's
    run.writer.write_summary(summary)


def _prediction_rows(run: _Run) -> list[dict]:
    """eval_predictions.jsonl's rows from the final evaluation: a classifier's or regressor's
    predictions, a language model's per-example loss."""
    compute = getattr(run.trainer, "compute_metrics", None)
    if isinstance(compute, PredictionMetrics):
        return compute.rows(run.data.labels)
    counts = getattr(run.trainer, "last_counts", None)
    return counts.rows() if counts is not None else []


def resume(run_dir: str | Path, *, model: torch.nn.Module | None = None, tokenizer: Any = None,
           data: TrainData | None = None, callbacks: list | None = None,
           progress: bool = True, verbose: bool = False) -> RunRecord:
    """Continue an interrupted run from its last checkpoint, with the options it started with.

    Runs of a model given by name are reloaded from it; an in-memory model must be passed again
    (``model``, ``tokenizer``), untrained, as it was at the start.
    """
    writer = RunWriter.reopen(Path(run_dir))
    recorded = RunRecord.load(writer.path)
    source = model if model is not None else recorded.config.get("model")
    if source is None:
        raise RunError(f"--resume '{run_dir}' trained an in-memory model: resume it from Python "
                       "with alphasel.training.resume(run_dir, model=..., tokenizer=...)")
    config = TrainConfig.from_dict(recorded.config["config"])
    precision = recorded.config.get("precision")
    if precision and config.dtype == "auto":
        # The base the run started on, whatever this machine's policy would choose: a run
        # begun on a GPU with a bf16 base continues on it, not on a float32 one.
        config = dataclasses.replace(config, dtype=precision["base"])
    spec = recorded.config.get("data_source") or recorded.config["data"]
    return train(source, recorded.plan, data if data is not None else spec, config,
                 tokenizer=tokenizer, revision=recorded.config.get("revision"),
                 resume=writer.path, prompts=recorded.config.get("prompts"),
                 callbacks=callbacks, progress=progress, verbose=verbose)
