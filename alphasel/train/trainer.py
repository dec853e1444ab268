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
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from alphasel.errors import DataError, PlanError, RunError, TrainConfigError
from alphasel.plan import InjectionPlan
from alphasel.train.callbacks import MetricsCallback, peak_memory, start_memory_tracking
from alphasel.train.config import ADAPTER_METHODS, TrainConfig
from alphasel.train.data import TrainData, load_data
from alphasel.train.generations import complete, format_prompt, read_prompts
from alphasel.train.models import ModelInfo, load_model, load_tokenizer
from alphasel.train.record import (
    GENERATIONS_FILE,
    RunRecord,
    RunWriter,
    make_run_id,
    read_jsonl,
    train_runs_dir,
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


def _cpu_launch() -> bool:
    """A multi-process launch (torchrun, accelerate launch) on a machine without CUDA.

    accelerate treats such a launch as distributed only when told to use the CPU; otherwise
    every process would train alone and all of them would write the same record."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _distributed() -> Any:
    """accelerate's process state: starts the process group under torchrun/accelerate launch
    (gloo on CPU, NCCL on GPUs) and is a single process otherwise."""
    from accelerate import PartialState

    return PartialState(cpu=_cpu_launch())


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
    assert plan is not None  # checked in train()
    return plan.apply(model, **_adapter_overrides(config, config.task))


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; PEFT's count knows 4-bit packing."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    parameters = list(model.parameters())
    return (sum(p.numel() for p in parameters if p.requires_grad),
            sum(p.numel() for p in parameters))


def _arguments(config: TrainConfig, output_dir: Path, data: TrainData, progress: bool,
               resuming: bool) -> Any:
    """TrainingArguments (SFTConfig for language models) with every field alphasel decides set
    explicitly: SFTConfig's own defaults (lr 2e-5, gradient checkpointing on, bf16 on where
    supported) would otherwise differ from plain Trainer's."""
    from transformers import TrainingArguments

    fields: dict[str, Any] = dict(
        output_dir=str(output_dir), num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr,
        lr_scheduler_type=config.scheduler, warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay, bf16=config.bf16, fp16=config.fp16,
        gradient_checkpointing=config.grad_checkpointing,
        # Non-reentrant checkpointing works with frozen inputs (LoRA) and with DDP.
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=config.seed, data_seed=config.seed, logging_steps=config.log_every,
        eval_strategy="steps" if config.eval_every else "epoch",
        # The untrained model's eval loss, at step 0 (a resumed run has it already).
        eval_steps=config.eval_every, eval_on_start=not resuming,
        save_strategy="steps" if config.save_every else "no", save_steps=config.save_every,
        report_to=config.report_to, include_num_input_tokens_seen="non_padding",
        disable_tqdm=not progress, ddp_find_unused_parameters=False,
        # Trainer defaults to adamw_torch_fused, which has no CPU kernel for every dtype.
        optim="adamw_torch", dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=_cpu_launch())
    if data.kind == "classification":
        return TrainingArguments(**fields)
    from trl import SFTConfig

    return SFTConfig(**fields, max_length=config.max_seq_len, packing=False,
                     completion_only_loss=None, dataset_num_proc=None)


def _accuracy(prediction: Any) -> dict[str, float]:
    logits, labels = prediction
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def build_trainer(model: torch.nn.Module, tokenizer: Any, data: TrainData, config: TrainConfig,
                  output_dir: Path, callbacks: list, progress: bool = True,
                  resuming: bool = False) -> Any:
    """The transformers Trainer (SFTTrainer for language models) for this run."""
    args = _arguments(config, output_dir, data, progress, resuming)
    if data.kind == "classification":
        from transformers import DataCollatorWithPadding, Trainer

        return Trainer(model=model, args=args, train_dataset=data.train,
                       eval_dataset=data.eval, processing_class=tokenizer,
                       data_collator=DataCollatorWithPadding(tokenizer),
                       compute_metrics=_accuracy, callbacks=callbacks)
    trainer = _sft_trainer_class()(model=model, args=args, train_dataset=data.train,
                                   eval_dataset=data.eval, processing_class=tokenizer,
                                   callbacks=callbacks)
    _drop_unlearnable(trainer, config)
    return trainer


def _sft_trainer_class() -> type:
    from transformers import Trainer
    from trl import SFTTrainer

    class SFTDataTrainer(SFTTrainer):
        """TRL's SFTTrainer for the data (prompt-completion tokenizing, EOS, completion mask,
        truncation, collator) with transformers' own loss: the model's mean cross-entropy over
        the label tokens, as a plain Trainer computes it.

        TRL 1.x computes the loss through a fused LM head that also yields entropy and top-1
        accuracy; on CPU that made each SmolLM2 step ~35% slower (4.5-5.5 s against 3.2-3.6 s
        for batch 4 x 128, measured here), and the loss it reports is the same quantity."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False  # no KV cache while training
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return SFTDataTrainer


def _drop_unlearnable(trainer: Any, config: TrainConfig) -> None:
    """TRL drops examples whose labels are all masked after truncation (they teach nothing);
    refuse data where that leaves a split empty, instead of failing deep inside the loop."""
    for split in ("train", "eval"):
        if len(getattr(trainer, f"{split}_dataset")) == 0:
            raise DataError(f"--max-seq-len {config.max_seq_len} leaves no response tokens in "
                            f"any {split} example: raise --max-seq-len")


def _last_checkpoint(writer: RunWriter) -> tuple[str | None, int]:
    from transformers.trainer_utils import get_last_checkpoint

    if not writer.checkpoints_dir.is_dir():
        return None, 0
    last = get_last_checkpoint(str(writer.checkpoints_dir))
    return (last, int(last.rsplit("-", 1)[1])) if last else (None, 0)


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
    file, directory or hub dataset id (see :func:`alphasel.train.data.load_data`). The record
    goes to ``out`` (default ``runs/train/<run-id>/``); ``resume`` continues an interrupted
    run in place from its last checkpoint. ``analysis`` is stored beside an inline plan;
    ``callbacks`` are extra transformers ``TrainerCallback``s.
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
    if config.quantize:
        from alphasel.train.models import check_4bit_supported

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
    loaded, tokenizer, info = load_model(model, task=config.task, revision=revision,
                                         tokenizer=tokenizer, labels=data.labels,
                                         quantize=config.quantize)
    from transformers import set_seed

    set_seed(config.seed)  # adapter initialisation is part of the paired design
    try:
        prepared = prepare_model(loaded, plan, config)
    except PlanError as err:
        raise PlanError(f"{err} (model '{info.model_id}')") from err
    trainable, total = parameter_counts(prepared)
    if plan is not None and plan.total_params is None:
        plan = dataclasses.replace(plan, total_params=total)

    writer = _agree(state, lambda: _open_run(out, resume, overwrite, info, plan, config))
    main = state.is_main_process
    checkpoint, resumed_step = _last_checkpoint(writer) if resume else (None, 0)
    if main:
        if resume:
            _check_same_data(writer, data)
            writer.keep_metrics_through(resumed_step)
        else:
            writer.write_config(_config_record(model, revision, info, data, plan, config,
                                               command, state.num_processes))
            if plan is not None:
                writer.write_plan(plan)
            if analysis is not None:
                writer.write_analysis(analysis)
    state.wait_for_everyone()

    language_model = data.kind != "classification"
    prompt_texts = [format_prompt(p, data.kind, config.template, tokenizer)
                    for p in (prompt_list or data.prompts)] if language_model else []
    generate = config.generate and language_model and bool(prompt_texts)
    if generate and main and not any(row.get("when") == "before" for row in
                                     read_jsonl(writer.path / GENERATIONS_FILE)):
        for prompt, text in zip(prompt_texts, complete(prepared, tokenizer, prompt_texts,
                                                       config.max_new_tokens), strict=True):
            writer.append(GENERATIONS_FILE, {"when": "before", "prompt": prompt,
                                             "completion": text})

    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(writer.path / "tensorboard"))
    metrics = MetricsCallback(writer if main else None)
    trainer = build_trainer(prepared, tokenizer, data, config, writer.checkpoints_dir,
                            [metrics, *(callbacks or [])], progress, resuming=bool(resume))
    start_memory_tracking()
    trainer.train(resume_from_checkpoint=checkpoint)
    evals = [row for row in read_jsonl(writer.path / "metrics.jsonl") if "eval_loss" in row]
    if not evals or evals[-1]["step"] != trainer.state.global_step:
        trainer.evaluate()  # the final eval loss belongs to the final weights
    state.wait_for_everyone()
    memory = peak_memory()
    if config.save_adapter:
        trainer.save_model(str(writer.adapter_dir))
    if main and writer.checkpoints_dir.is_dir() and not any(writer.checkpoints_dir.iterdir()):
        writer.checkpoints_dir.rmdir()  # the Trainer makes it even when nothing is saved
    if generate and main:
        for prompt, text in zip(prompt_texts, complete(trainer.model, tokenizer, prompt_texts,
                                                       config.max_new_tokens), strict=True):
            writer.append(GENERATIONS_FILE, {"when": "after", "prompt": prompt,
                                             "completion": text})
    if main:
        evals = [row for row in read_jsonl(writer.path / "metrics.jsonl") if "eval_loss" in row]
        training = metrics.train_seconds - metrics.eval_seconds
        summary = {
            "eval_loss": evals[-1]["eval_loss"],
            "best_eval_loss": min(row["eval_loss"] for row in evals),
            "wall_s": round(time.perf_counter() - started, 3),
            "train_wall_s": round(metrics.train_seconds, 3),
            "eval_in_train_s": round(metrics.eval_seconds, 3),
            "train_tokens": metrics.tokens,
            "tokens_per_s": (round(metrics.tokens / training, 2) if training > 0 else None),
            "peak_memory_mb": memory["peak_memory_mb"], "peak_memory": memory,
            "trainable_params": trainable, "total_params": total,
            "global_step": trainer.state.global_step, "epochs": trainer.state.epoch,
            "resumed_from_step": resumed_step if resume else None,
            "world_size": state.num_processes,
            "device": str(trainer.args.device),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if "eval_accuracy" in evals[-1]:
            summary["eval_accuracy"] = evals[-1]["eval_accuracy"]
        writer.write_summary(summary)
    state.wait_for_everyone()
    return RunRecord.load(writer.path)


def _quiet_libraries() -> None:
    """No progress bars from transformers (weight loading) or datasets (tokenizing maps)."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _open_run(out: str | Path | None, resume: str | Path | None, overwrite: bool,
              info: ModelInfo, plan: InjectionPlan | None, config: TrainConfig) -> RunWriter:
    if resume is not None:
        return RunWriter.reopen(Path(resume))
    path = Path(out) if out is not None else train_runs_dir() / make_run_id(
        info.model_id, _label(plan, config))
    return RunWriter.create(path, overwrite=overwrite)


def _config_record(model: Any, revision: str | None, info: ModelInfo, data: TrainData,
                   plan: InjectionPlan | None, config: TrainConfig, command: list[str] | None,
                   world_size: int) -> dict[str, Any]:
    """config.json: enough to know what ran and to run it again (``--resume`` reads it)."""
    return {
        "model": model if isinstance(model, str) else str(model) if isinstance(model, Path)
        else None,
        "model_id": info.model_id, "revision": info.revision, "model_location": info.location,
        "model_format": info.format, "data": data.name, "data_kind": data.kind,
        "data_fingerprint": data.fingerprint, "data_description": data.description,
        "data_details": data.details, "labels": data.labels, "method": config.method,
        "scheme": plan.scheme if plan else None, "k": plan.k if plan else None,
        "config": config.to_dict(), "world_size": world_size, "versions": _versions(),
        "command": command if command is not None else sys.argv,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _check_same_data(writer: RunWriter, data: TrainData) -> None:
    recorded = RunRecord.load(writer.path).config.get("data_fingerprint")
    if recorded != data.fingerprint:
        raise RunError(f"--resume '{writer.path}': the data '{data.name}' differs from what the "
                       "run started with (fingerprint changed): resume with the same data and "
                       "options, or start a new run")


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
                       "with alphasel.train.resume(run_dir, model=..., tokenizer=...)")
    config = TrainConfig.from_dict(recorded.config["config"])
    return train(source, recorded.plan, data if data is not None else recorded.config["data"],
                 config, tokenizer=tokenizer, revision=recorded.config.get("revision"),
                 resume=writer.path, callbacks=callbacks, progress=progress)
