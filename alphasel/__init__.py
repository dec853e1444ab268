"""alphasel: heavy-tailed alpha per weight matrix, and alpha-guided LoRA injection plans.

    table = alphasel.analyze("smollm2")              # the alpha table (pandas DataFrame)
    plan = alphasel.make_plan(table, scheme="blora", k=8)
    model = plan.apply(model)                          # PEFT model, adapted exactly as planned
    record = alphasel.train("smollm2", plan, "stdlib-code", alphasel.TrainConfig(epochs=1))

Public names are imported on first use, so `import alphasel` stays cheap (no torch/peft load).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name → module that defines it
_EXPORTS = {
    "analyze": "alphasel.analyzer",
    "fit_power_law": "alphasel.powerlaw",
    "eigenvalues": "alphasel.spectra",
    "block_of": "alphasel.layout",
    "kind_of": "alphasel.layout",
    "read_table": "alphasel.table",
    "write_table": "alphasel.table",
    "latest_analysis": "alphasel.table",
    "make_plan": "alphasel.planner",
    "InjectionPlan": "alphasel.plan",
    "PlannedModule": "alphasel.plan",
    "AlphaselError": "alphasel.errors",
    "figure": "alphasel.plots",
    "surface_figure": "alphasel.plots",
    "heatmap_figure": "alphasel.plots",
    "layers_figure": "alphasel.plots",
    "kinds_figure": "alphasel.plots",
    "difference_figure": "alphasel.plots",
    "save_figure": "alphasel.plots",
    "TrainConfig": "alphasel.train.config",
    "RunRecord": "alphasel.train.record",
    "list_runs": "alphasel.train.record",
}

__all__ = sorted([*_EXPORTS, "train"]) + ["__version__"]

# `alphasel.train` is both the TRAIN subpackage and its entry function. Importing the (light,
# lazy) subpackage now and then binding the function keeps `alphasel.train(...)` a function:
# later imports of alphasel.train.* find the package in sys.modules and leave this name alone.
from alphasel import train as _train_package  # noqa: E402, F401


def train(*args, **kwargs):
    """Fine-tune a plan and record the run: :func:`alphasel.train.trainer.train`."""
    from alphasel.train.trainer import train as run_training

    return run_training(*args, **kwargs)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alphasel' has no attribute '{name}'")


def __dir__() -> list[str]:
    return __all__
