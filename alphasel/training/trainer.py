"""TRAIN: fine-tune an injection plan (or every weight) and record the run.

    record = alphasel.train("smollm2", "runs/plans/smollm2-blora-k8.json", "stdlib-code",
                            TrainConfig(epochs=3))

The loop, logging, evaluation, checkpoints and multi-process training are transformers'
``Trainer`` (TRL's ``SFTTrainer`` for language models: it tokenizes instruction data, appends
EOS and masks the prompt from the loss). alphasel adds the model/plan/data plumbing and the run
record. Launched by ``torchrun`` or ``accelerate launch``, every process runs this same code;
only the main process writes the record.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from alphasel.errors import PlanError, RunError, TrainConfigError
from alphasel.plan import InjectionPlan
from alphasel.training.alpha import (
    AlphaCallback,
    alpha_options,
    measured_modules,
)
from alphasel.training.builder import build_trainer, cpu_only
from alphasel.training.callbacks import MetricsCallback, peak_memory, start_memory_tracking
from alphasel.training.config import ADAPTER_METHODS, TrainConfig
from alphasel.training.data import TrainData, load_data
from alphasel.training.generations import format_prompt, read_prompts, record_generations
from alphasel.training.models import ModelInfo, check_4bit_supported, load_model, load_tokenizer
from alphasel.training.record import (
    CHECKPOINTS_DIR,
    FOLDED_DIR,
    GENERATIONS_FILE,
    METRICS_FILE,
    SELECTIONS_FILE,
    TENSORBOARD_DIR,
    RunRecord,
    RunWriter,
    last_checkpoint,
    make_run_id,
    read_jsonl,
    train_runs_dir,
)
from alphasel.training.reselect import (
    Reselector,
    candidate_table,
    fold_adapters,
    mark_reselected,
    replan,
    selection_row,
)

#: Versions of the packages that decide a run's numbers, recorded in config.json.
_VERSIONED = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes")


def _versions() -> dict[str, str]:
    from importlib import metadata

    import alphasel

    versions = {"alphasel": alphasel.__version__, "python": sys.version.split()[0]}
    for package in _VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _distributed() -> Any:
    """accelerate's process state: starts the process group under torchrun/accelerate launch
    (gloo on CPU, NCCL on GPUs) and is a single process otherwise."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())


def _agree(state: Any, make: Any) -> Any:
    """Run ``make()`` on the main process and give its result (or its error) to every process,
    so all ranks use one run directory and fail together instead of waiting on each other."""
    if state.num_processes == 1:
        return make()
    from torch.distributed import broadcast_object_list

    payload: list[Any] = [None]
    if state.is_main_process:
        try:
            payload = [("ok", make())]
        except Exception as err:  # re-raised on every rank below
            payload = [("error", err)]
    broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise value
    return value


def _label(plan: InjectionPlan | None, config: TrainConfig) -> str:
    if plan is None:
        return config.method
    return f"{plan.scheme}-k{plan.k}-{config.method}"


def _adapter_overrides(config: TrainConfig, task: str) -> dict[str, Any]:
    init: bool | str = True if config.lora_init == "default" else config.lora_init
    return {"use_dora": config.method == "dora", "use_rslora": config.method == "rslora",
            "lora_dropout": config.lora_dropout, "init_lora_weights": init,
            "task_type": "SEQ_CLS" if task == "classification" else "CAUSAL_LM"}


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
    """The model with the plan's adapters (all weights trainable for full fine-tuning)."""
    if config.method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    if config.quantize:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.grad_checkpointing)
    if plan is None:
        raise TrainConfigError(f"--method {config.method} needs a plan: pass --plan or --scheme")
    return plan.apply(model, **_adapter_overrides(config, config.task))


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; PEFT's count knows 4-bit packing."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    parameters = list(model.parameters())
    return (sum(p.numel() for p in parameters if p.requires_grad),
            sum(p.numel() for p in parameters))


def _check_reporters(config: TrainConfig) -> None:
    """--report-to names integrations whose packages are installed (transformers would fail
    deep inside the Trainer's construction otherwise)."""
    if config.report_to in (["none"], ["all"]):
        return
    from transformers.integrations import get_available_reporting_integrations

    available = set(get_available_reporting_integrations())
    missing = [name for name in config.report_to if name not in available]
    if missing:
        raise TrainConfigError(f"--report-to {','.join(missing)}: the package is not installed "
                               f"(`pip install {' '.join(missing)}`), or drop it from --report-to")


def _resolved(spec: Any) -> Any:
    """An existing local path as an absolute path (so --resume works from any directory);
    anything else (hub id, alias, built-in name, module) unchanged."""
    if isinstance(spec, str | Path) and Path(spec).expanduser().exists():
        return str(Path(spec).expanduser().resolve())
    return spec


def train(model: str | Path | torch.nn.Module, plan: InjectionPlan | str | Path | None = None,
          data: str | TrainData = "stdlib-code", config: TrainConfig | None = None, *,
          tokenizer: Any = None, revision: str | None = None, out: str | Path | None = None,
          overwrite: bool = False, resume: str | Path | None = None,
          analysis: pd.DataFrame | None = None, prompts: str | Path | list[str] | None = None,
          callbacks: list | None = None, progress: bool = True,
          command: list[str] | None = None) -> RunRecord:
    """Fine-tune ``model`` with ``plan``'s adapters (``plan=None`` with ``method="full"`` trains
    every weight) on ``data`` and write the run record; returns it.

    ``model`` is what ``alphasel analyze`` takes (hub id, checkpoint dir, .gguf, ``smollm2``,
    ``minilm``) or an in-memory module with its ``tokenizer``. ``data`` is a built-in name,
    file, directory or hub dataset id (see :func:`alphasel.training.data.load_data`). The record
    goes to ``out`` (default ``runs/train/<run-id>/``); ``resume`` continues an interrupted
    run in place from its last checkpoint. ``analysis`` is stored beside an inline plan;
    ``callbacks`` are extra transformers ``TrainerCallback``s. Nothing is written until the
    model, plan and data have been checked and the trainer is built.
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    if isinstance(plan, str | Path):
        plan = InjectionPlan.load(plan)
    if config.method == "full" and plan is not None:
        raise TrainConfigError("--method full trains every weight; it takes no plan: drop "
                               "--plan/--scheme, or choose --method lora, dora or rslora")
    if config.method in ADAPTER_METHODS and plan is None:
        raise TrainConfigError(f"--method {config.method} needs a plan: pass --plan FILE or "
                               "--scheme/--k to plan inline (or --method full)")
    if resume is not None and config.reselecting:
        raise RunError(f"--resume '{resume}': the run re-selects its modules, and re-selecting "
                       "runs cannot be resumed yet (no checkpoint holds the folded base "
                       "weights): start it again")
    _check_reporters(config)
    if config.quantize:
        check_4bit_supported()
    prompt_list = read_prompts(prompts) if isinstance(prompts, str | Path) else prompts
    if not progress:
        _quiet_libraries()
    state = _distributed()

    # Tokenizer → data (its labels size a classifier head) → model → adapters.
    if tokenizer is None and not isinstance(model, torch.nn.Module):
        tokenizer = load_tokenizer(str(model), revision=revision)
    if tokenizer is None:
        raise TrainConfigError("an in-memory model needs its tokenizer: pass tokenizer=...")
    if not isinstance(data, TrainData):
        data = load_data(data, tokenizer, task=config.task, template=config.template,
                         max_seq_len=config.max_seq_len, max_samples=config.max_samples,
                         eval_fraction=config.eval_fraction, seed=config.seed)
    if (data.kind == "classification") != (config.task == "classification"):
        raise TrainConfigError(f"data '{data.name}' is {data.kind} data but --task is "
                               f"{config.task}: use --task "
                               f"{'classification' if data.kind == 'classification' else 'causal'}")
    from transformers import set_seed

    # A classifier's new head is initialised while loading: seeded, so that runs with the same
    # seed start from the same head whatever else ran in the process before (paired design).
    set_seed(config.seed)
    loaded, tokenizer, info = load_model(model, task=config.task, revision=revision,
                                         tokenizer=tokenizer, labels=data.labels,
                                         quantize=config.quantize)
    set_seed(config.seed)  # adapter initialisation is part of the paired design
    if plan is not None:
        plan = align_plan(plan, loaded)
    try:
        prepared = prepare_model(loaded, plan, config)
    except PlanError as err:
        raise PlanError(f"{err} (model '{info.model_id}')") from err
    trainable, total = parameter_counts(prepared)
    if plan is not None and plan.total_params is None:
        plan = dataclasses.replace(plan, total_params=total)

    path = _agree(state, lambda: _run_path(out, resume, overwrite, info, plan, config,
                                           data, state.num_processes))
    existed = path.exists()
    checkpoint, resumed_step = last_checkpoint(path / CHECKPOINTS_DIR) if resume else (None, 0)
    recorded = [row for row in read_jsonl(path / METRICS_FILE)
                if row.get("step", 0) <= resumed_step] if resume else []
    metrics = MetricsCallback(None)
    # Re-selection re-plans from every candidate, so it measures them all.
    names, adapted = measured_modules(prepared, plan, "candidates" if config.reselecting
                                      else config.remeasure)
    alpha = AlphaCallback(names, adapted, alpha_options(plan, analysis), config.alpha_every)
    own = [metrics, alpha]
    reselector = Reselector(alpha, config.reselect_every) if config.reselecting else None
    if reselector is not None:
        own.append(reselector)
    try:
        trainer = _with_tensorboard_dir(path, lambda: build_trainer(
            prepared, tokenizer, data, config, path / CHECKPOINTS_DIR,
            [*own, *(callbacks or [])], progress,
            evaluate_first=not any(row.get("step") == 0 and "eval_loss" in row
                                   for row in recorded)))
    except BaseException:
        if state.is_main_process and not existed:
            _remove_if_empty(path)  # the Trainer made empty folders; leave nothing behind
        raise
    writer = _agree(state, lambda: _open_run(path, resume, overwrite))
    main = state.is_main_process
    if main:
        metrics.writer = alpha.writer = writer
        if resume:
            writer.keep_metrics_through(resumed_step)
            writer.keep_alpha_through(resumed_step)
        else:
            writer.write_config(_config_record(model, revision, info, data, plan, config,
                                               command, state.num_processes, prompt_list))
            if plan is not None:
                writer.write_plan(plan)
            if analysis is not None:
                writer.write_analysis(analysis)
            if reselector is not None and plan is not None:
                writer.append(SELECTIONS_FILE, selection_row(1, plan, 0, 1, None,
                                                             _budget(plan)))

    language_model = data.kind != "classification"
    prompt_texts = [format_prompt(p, data.kind, config.template, tokenizer)
                    for p in (prompt_list or data.prompts)] if language_model else []
    generate = config.generate and language_model and bool(prompt_texts)
    # TRL tokenizes Alpaca prompts with the tokenizer's special tokens (BOS); chat templates
    # and code chunks carry their own.
    special = data.kind == "instruction" and config.template == "alpaca"
    if generate and main and not any(row.get("when") == "before" for row in
                                     read_jsonl(writer.path / GENERATIONS_FILE)):
        record_generations(writer, "before", trainer.model, tokenizer, prompt_texts,
                           config.max_new_tokens, special)
    state.wait_for_everyone()

    start_memory_tracking()
    trainer.train(resume_from_checkpoint=checkpoint)
    reselect_seconds = 0.0
    if reselector is not None and plan is not None:
        reselect_seconds = _reselect_rounds(trainer, reselector, alpha, state, writer if main
                                            else None, plan, config)
    step = trainer.state.global_step
    if not any("eval_loss" in entry and entry.get("step") == step
               for entry in trainer.state.log_history):  # the same answer on every rank
        trainer.evaluate()  # the final eval loss belongs to the final weights
    state.wait_for_everyone()
    memory = peak_memory()
    if config.save_adapter:
        trainer.save_model(str(writer.adapter_dir))
    if generate and main:
        record_generations(writer, "after", trainer.model, tokenizer, prompt_texts,
                           config.max_new_tokens, special)
    if main:
        if writer.checkpoints_dir.is_dir() and not any(
                item.name.startswith("checkpoint-") for item in writer.checkpoints_dir.iterdir()):
            # The Trainer makes it even when nothing is saved (and TRL leaves a model card in
            # it when a re-selection checkpoint was saved and consumed).
            shutil.rmtree(writer.checkpoints_dir)
        summary = _summary(writer, metrics, memory, trainer, trainable, total, started,
                           resumed_step if resume else None, state.num_processes)
        summary["alpha_seconds"] = round(alpha.seconds, 3)
        if reselector is not None:
            summary["rounds"] = len(read_jsonl(writer.path / SELECTIONS_FILE))
            summary["reselect_seconds"] = round(reselect_seconds, 3)
            summary["trainable_params"] = parameter_counts(trainer.model)[0]  # the last round's
        writer.write_summary(summary)
    state.wait_for_everyone()
    return RunRecord.load(writer.path)


def _budget(plan: InjectionPlan) -> int:
    """The trainable-parameter budget every re-selection round is held to."""
    return int(plan.budget or plan.trainable_params)


def _reselect_rounds(trainer: Any, reselector: Reselector, alpha: AlphaCallback, state: Any,
                     writer: RunWriter | None, plan: InjectionPlan,
                     config: TrainConfig) -> float:
    """Re-select every time the Trainer stopped for it, then let it continue; returns the
    seconds spent folding, re-planning and injecting. ``writer`` is None off the main process.

    Each round: the main process saves the round's adapter under folded/round-N, every process
    folds it into its base weights, the main process re-plans from the alpha just measured and
    every process receives that plan (so all ranks adapt the same modules), fresh adapters are
    injected with a seed from (run seed, round), and the Trainer resumes from the checkpoint it
    saved, with a fresh optimizer and the scheduler restored."""
    from transformers import set_seed

    total = 0.0
    current, round_ = plan, 1
    while reselector.pending is not None:
        step, reselector.pending = reselector.pending, None
        checkpoint = Path(trainer.args.output_dir) / f"checkpoint-{step}"
        started = time.perf_counter()
        if writer is not None:
            trainer.model.save_pretrained(str(writer.path / FOLDED_DIR / f"round-{round_}"))
        base = fold_adapters(trainer.model)
        round_ += 1
        # The initial plan is the recipe every round (its k, its seed for random).
        table = candidate_table(alpha.last_rows, base, plan) if writer is not None else None
        chosen = _agree(state, lambda table=table, round_=round_: replan(
            plan, table, round_, _budget(plan)))
        set_seed(config.seed + round_)
        model = prepare_model(base, chosen, config)
        _check_same_modules(state, chosen)
        if writer is not None:
            mark_reselected(checkpoint, model, round_)
            seconds = time.perf_counter() - started
            writer.append(SELECTIONS_FILE, selection_row(
                round_, chosen, step, math.floor(trainer.state.epoch + 1e-9) + 1, current,
                _budget(plan), seconds))
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


def _check_same_modules(state: Any, plan: InjectionPlan) -> None:
    """Every process adapts the same modules (DDP would average unrelated gradients of
    same-shaped matrices otherwise)."""
    if state.num_processes == 1:
        return
    from torch.distributed import all_gather_object

    gathered: list[Any] = [None] * state.num_processes
    all_gather_object(gathered, plan.module_names)
    if any(names != gathered[0] for names in gathered):
        raise RunError("re-selection chose different modules on different processes; "
                       "please report this with the run's config.json")


def _summary(writer: RunWriter, metrics: MetricsCallback, memory: dict, trainer: Any,
             trainable: int, total: int, started: float, resumed_step: int | None,
             world_size: int) -> dict[str, Any]:
    """summary.json's fields. A resumed run's time and token figures cover its last session
    (the one that finished); ``resumed_from_step`` says where that session began."""
    evals = [row for row in read_jsonl(writer.path / METRICS_FILE) if "eval_loss" in row]
    losses = [row["eval_loss"] for row in evals if row["eval_loss"] is not None]  # NaN → null
    training = metrics.train_seconds - metrics.eval_seconds
    summary = {
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "best_eval_loss": min(losses) if losses else None,
        "wall_s": round(time.perf_counter() - started, 3),
        "train_wall_s": round(metrics.train_seconds, 3),
        "eval_in_train_s": round(metrics.eval_seconds, 3),
        "train_tokens": metrics.tokens,
        "tokens_per_s": round(metrics.tokens / training, 2) if training > 0 else None,
        "peak_memory_mb": memory["peak_memory_mb"], "peak_memory": memory,
        "trainable_params": trainable, "total_params": total,
        "global_step": trainer.state.global_step, "epochs": trainer.state.epoch,
        "resumed_from_step": resumed_step, "world_size": world_size,
        "device": str(trainer.args.device),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if evals and "eval_accuracy" in evals[-1]:
        summary["eval_accuracy"] = evals[-1]["eval_accuracy"]
    return summary


def _quiet_libraries() -> None:
    """No progress bars from transformers (weight loading) or datasets (tokenizing maps)."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _with_tensorboard_dir(path: Path, build: Any) -> Any:
    """Build the Trainer with TensorBoard logging into ``<run>/tensorboard`` (transformers
    reads the directory from the environment when it builds its callbacks), then restore the
    environment so the next run in this process logs into its own directory."""
    previous = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = previous or str(path / TENSORBOARD_DIR)
    try:
        return build()
    finally:
        if previous is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)


def _remove_if_empty(path: Path) -> None:
    if path.is_dir() and not any(item.is_file() for item in path.rglob("*")):
        shutil.rmtree(path, ignore_errors=True)


def _run_path(out: str | Path | None, resume: str | Path | None, overwrite: bool,
              info: ModelInfo, plan: InjectionPlan | None, config: TrainConfig,
              data: TrainData, world_size: int) -> Path:
    """Where the record goes, checked before anything is written there."""
    if resume is not None:
        writer = RunWriter.reopen(Path(resume))
        _check_same_run(writer, data, world_size)
        return writer.path
    path = Path(out) if out is not None else train_runs_dir() / make_run_id(
        info.model_id, _label(plan, config))
    RunWriter.check_target(path, overwrite)
    return path


def _open_run(path: Path, resume: str | Path | None, overwrite: bool) -> RunWriter:
    if resume is not None:
        return RunWriter.reopen(path)
    return RunWriter.create(path, overwrite=overwrite)


def _config_record(model: Any, revision: str | None, info: ModelInfo, data: TrainData,
                   plan: InjectionPlan | None, config: TrainConfig, command: list[str] | None,
                   world_size: int, prompts: list[str] | None) -> dict[str, Any]:
    """config.json: enough to know what ran and to run it again (``--resume`` reads it)."""
    return {
        "model": None if isinstance(model, torch.nn.Module) else _resolved(model),
        "model_id": info.model_id, "revision": info.revision, "model_location": info.location,
        "model_format": info.format, "data": data.name, "data_source": _resolved(data.name),
        "data_kind": data.kind, "data_fingerprint": data.fingerprint,
        "data_description": data.description, "data_details": data.details,
        "labels": data.labels, "method": config.method,
        "scheme": plan.scheme if plan else None, "k": plan.k if plan else None,
        "config": config.to_dict(), "prompts": prompts, "world_size": world_size,
        "versions": _versions(), "command": command if command is not None else sys.argv,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _check_same_run(writer: RunWriter, data: TrainData, world_size: int) -> None:
    recorded = RunRecord.load(writer.path).config
    if recorded.get("data_fingerprint") != data.fingerprint:
        raise RunError(f"--resume '{writer.path}': the data '{data.name}' differs from what the "
                       "run started with (fingerprint changed): resume with the same data and "
                       "options, or start a new run")
    if recorded.get("world_size") != world_size:
        raise RunError(f"--resume '{writer.path}': the run started with "
                       f"{recorded.get('world_size')} process(es), this launch has {world_size}"
                       f" (the global batch would change mid-run): launch "
                       f"{recorded.get('world_size')} process(es)")


def resume(run_dir: str | Path, *, model: torch.nn.Module | None = None, tokenizer: Any = None,
           data: TrainData | None = None, callbacks: list | None = None,
           progress: bool = True) -> RunRecord:
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
    spec = recorded.config.get("data_source") or recorded.config["data"]
    return train(source, recorded.plan, data if data is not None else spec, config,
                 tokenizer=tokenizer, revision=recorded.config.get("revision"),
                 resume=writer.path, prompts=recorded.config.get("prompts"),
                 callbacks=callbacks, progress=progress)
