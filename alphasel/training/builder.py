"""The transformers Trainer for one run: arguments, the SFT trainer, the classifier's collator.

Language models train with TRL's SFTTrainer (it tokenizes instruction data, appends EOS, masks
the prompt and collates), their evaluations also counting perplexity and next-token accuracy
(:mod:`alphasel.training.lm_evaluation`); classifiers and regressors with transformers' Trainer,
a padding collator and the task's own metrics (:mod:`alphasel.training.task_metrics`). Every
field alphasel decides is set explicitly, so TRL's and transformers' differing defaults never
leak into a run.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch

from alphasel.errors import DataError, TrainConfigError
from alphasel.training.callbacks import ConsoleCallback
from alphasel.training.config import HEAD_TASKS, TrainConfig
from alphasel.training.data import TrainData
from alphasel.training.distributed import cpu_only
from alphasel.training.lm_evaluation import EvaluatesLanguageModel
from alphasel.training.memory import MeasuresActivations
from alphasel.training.precision import hold_trainable_in_float32
from alphasel.training.reselect import ContinuesSchedule
from alphasel.training.task_metrics import PredictionMetrics


def _arguments(config: TrainConfig, output_dir: Path, data: TrainData, progress: bool,
               evaluate_first: bool, autocast: str | None) -> Any:
    """TrainingArguments (SFTConfig for language models) with every field alphasel decides set
    explicitly: SFTConfig's own defaults (lr 2e-5, gradient checkpointing on, bf16 on where
    supported) would otherwise differ from plain Trainer's. ``autocast`` is the run's resolved
    mixed precision (a half-precision base computes in its own)."""
    from transformers import TrainingArguments

    fields: dict[str, Any] = dict(
        output_dir=str(output_dir), num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr,
        lr_scheduler_type=config.scheduler, warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay, bf16=autocast == "bf16", fp16=autocast == "fp16",
        activation_checkpointing=config.grad_checkpointing,
        # Non-reentrant checkpointing works with frozen inputs (LoRA) and with DDP.
        activation_checkpointing_kwargs={"use_reentrant": False},
        seed=config.seed, data_seed=config.seed, logging_steps=config.log_every,
        eval_strategy="steps" if config.eval_every else "epoch",
        # The untrained model's eval loss at step 0 (a resumed run usually has it already).
        eval_steps=config.eval_every, eval_on_start=evaluate_first,
        save_strategy="steps" if config.save_every else "no", save_steps=config.save_every,
        report_to=config.report_to, include_num_input_tokens_seen="non_padding",
        disable_tqdm=not progress, ddp_find_unused_parameters=False,
        ddp_timeout=config.ddp_timeout,
        # Trainer defaults to adamw_torch_fused, which has no CPU kernel for every dtype.
        optim="adamw_torch", dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=cpu_only())
    if data.kind in HEAD_TASKS:
        return TrainingArguments(**fields)
    from trl import SFTConfig

    return SFTConfig(**fields, max_length=config.max_seq_len, packing=False,
                     completion_only_loss=None, dataset_num_proc=None)


def check_reporters(config: TrainConfig) -> None:
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


def build_trainer(model: torch.nn.Module, tokenizer: Any, data: TrainData, config: TrainConfig,
                  output_dir: Path, callbacks: list, progress: bool = True,
                  evaluate_first: bool = True, tensorboard_dir: Path | None = None, *,
                  autocast: str | None) -> Any:
    """The transformers Trainer (SFTTrainer for language models) for this run; with
    ``tensorboard_dir``, TensorBoard (--report-to) logs there. ``autocast`` (``bf16``, ``fp16`` or
    None) is the run's resolved :class:`~alphasel.training.precision.Precision`'s.

    transformers reads TensorBoard's directory from the environment when it builds its
    callbacks: it is set for the construction only, so the next run in this process logs into
    its own directory."""
    previous = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if tensorboard_dir is not None:
        os.environ["TENSORBOARD_LOGGING_DIR"] = previous or str(tensorboard_dir)
    try:
        return _trainer(model, tokenizer, data, config, output_dir, callbacks, progress,
                        evaluate_first, autocast)
    finally:
        if previous is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)


def _trainer(model: torch.nn.Module, tokenizer: Any, data: TrainData, config: TrainConfig,
             output_dir: Path, callbacks: list, progress: bool, evaluate_first: bool,
             autocast: str | None) -> Any:
    args = _arguments(config, output_dir, data, progress, evaluate_first, autocast)
    if data.kind in HEAD_TASKS:
        from transformers import DataCollatorWithPadding

        trainer = _classifier_trainer_class()(
            model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
            processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=PredictionMetrics(data.kind), callbacks=callbacks)
    else:
        trainer = _sft_trainer_class()(model=model, args=args, train_dataset=data.train,
                                       eval_dataset=data.eval, processing_class=tokenizer,
                                       callbacks=callbacks)
        _refuse_empty_splits(trainer, config)
    # TRL casts a 4-bit model's trainable parameters to bf16 as it builds the trainer (before
    # any optimizer exists): held in float32 again, as the dtype policy says.
    hold_trainable_in_float32(trainer.model)
    _use_console(trainer, progress)
    return trainer


def _use_console(trainer: Any, progress: bool) -> None:
    """alphasel's console in place of transformers' (a bar, or raw log dicts without one)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ConsoleCallback(progress))


class SavesPlannedAdapters:
    """Trainer mixin: adapters are saved without PEFT's embedding check. By default PEFT's
    save_pretrained asks whether the embeddings were resized by reading the base model's
    config.json, which a GGUF checkpoint's folder lacks (a warning at every save); alphasel's
    plans never adapt embeddings, so there is nothing to check."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from peft import PeftModel

        model = self.accelerator.unwrap_model(self.model)  # type: ignore[attr-defined]
        if not isinstance(model, PeftModel):
            return super()._save(output_dir, state_dict)  # type: ignore[misc]
        model.save_pretrained = functools.partial(type(model).save_pretrained, model,
                                                  save_embedding_layers=False)
        try:
            return super()._save(output_dir, state_dict)  # type: ignore[misc]
        finally:
            del model.save_pretrained


def _classifier_trainer_class() -> type:
    from transformers import Trainer

    class ClassifierTrainer(MeasuresActivations, ContinuesSchedule, SavesPlannedAdapters,
                            Trainer):
        """transformers' Trainer (a classifier's or a regressor's), able to continue its
        schedule across re-selections."""

    return ClassifierTrainer


def _sft_trainer_class() -> type:
    from transformers import Trainer
    from trl import SFTTrainer

    class SFTDataTrainer(EvaluatesLanguageModel, MeasuresActivations, ContinuesSchedule,
                         SavesPlannedAdapters, SFTTrainer):
        """TRL's SFTTrainer for the data (prompt-completion tokenizing, EOS, completion mask,
        truncation, collator) with transformers' own loss: the model's mean cross-entropy over
        the label tokens, as a plain Trainer computes it.

        TRL 1.x computes the loss through a fused LM head that also yields entropy and top-1
        accuracy; on CPU that made each SmolLM2 step ~35% slower (4.5-5.5 s against 3.2-3.6 s
        for batch 4 x 128, measured here), and the loss it reports is the same quantity."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False  # no KV cache while training
            with self.measuring(model, inputs):
                loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                                     num_items_in_batch=num_items_in_batch)
            if not model.training:
                self.count_tokens(outputs, inputs)
            return (loss, outputs) if return_outputs else loss

    return SFTDataTrainer


def _refuse_empty_splits(trainer: Any, config: TrainConfig) -> None:
    """TRL drops examples whose labels are all masked after truncation (they teach nothing);
    refuse data where that leaves a split empty, instead of failing deep inside the loop."""
    for split in ("train", "eval"):
        if len(getattr(trainer, f"{split}_dataset")) == 0:
            raise DataError(f"--max-seq-len {config.max_seq_len} leaves no response tokens in "
                            f"any {split} example: raise --max-seq-len")
