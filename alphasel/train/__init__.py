"""TRAIN: fine-tune an injection plan with PEFT (or every weight) and record the run.

    record = alphasel.train("smollm2", plan, "stdlib-code", TrainConfig(epochs=3))
    record.summary["best_eval_loss"], record.metrics()

Modules: ``config`` (TrainConfig), ``data`` (data sets → tokenized splits), ``models`` (models
and tokenizers), ``trainer`` (the entry :func:`train`, on transformers' Trainer / TRL's
SFTTrainer), ``callbacks`` (metrics and profiling), ``generations`` (before/after completions),
``record`` (the run directory).
"""

from alphasel.train.config import TrainConfig
from alphasel.train.record import RunRecord, list_runs
from alphasel.train.trainer import resume, train

__all__ = ["TrainConfig", "RunRecord", "list_runs", "resume", "train"]
