"""TRAIN: fine-tune an injection plan with PEFT (or every weight) and record the run.

    from alphasel.training import TrainConfig, train
    record = train("smollm2", plan, "stdlib-code", TrainConfig(epochs=3))
    record.summary["best_eval_loss"], record.metrics()

Modules: ``config`` (TrainConfig, whose fields are the CLI's training flags), ``data``
(data sets → tokenized splits; ``splits`` and ``stdlib_data`` behind it), ``models`` (models
and tokenizers), ``adapters`` (the model a run trains), ``builder`` (the transformers Trainer),
``trainer`` (the entry :func:`train`, read as its phases), ``callbacks`` (metrics, profiling,
the console), ``console`` (what the libraries may print), ``alpha`` (alpha across training),
``effective`` (effective weights), ``history`` (alpha_history.csv and alpha change),
``reselect`` (re-selection: fold, re-plan, fresh adapters, the rounds), ``distributed`` (one
decision for every process), ``provenance`` (config.json), ``summary`` (summary.json),
``generations`` (before/after completions), ``record`` (the run directory).
Names are imported on first use, so importing this package loads neither torch nor TRL.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "alphasel.training.config",
    "RunRecord": "alphasel.training.record",
    "list_runs": "alphasel.training.record",
    "resume": "alphasel.training.trainer",
    "train": "alphasel.training.trainer",
    "trained_model": "alphasel.training.reselect",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alphasel.training' has no attribute '{name}'")
