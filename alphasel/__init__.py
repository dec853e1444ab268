"""alphasel: heavy-tailed alpha per weight matrix, and alpha-guided LoRA injection plans.

    table = alphasel.analyze("smollm2")              # the alpha table (pandas DataFrame)
    plan = alphasel.make_plan(table, scheme="blora", k=8)
    model = plan.apply(model)                          # PEFT model, adapted exactly as planned
    record = alphasel.train("smollm2", plan, "stdlib-code", alphasel.TrainConfig(epochs=1))

Public names are imported on first use, so `import alphasel` stays cheap (no torch/peft load).
``alphasel.train`` is the training function; the training package is ``alphasel.training``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

__version__ = "0.1.0"

# public name → module that defines it
_EXPORTS = {
    "analyze": "alphasel.analyzer",
    "analyze_matrix": "alphasel.analyzer",
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
    "figure": "alphasel.plots.tables",
    "surface_figure": "alphasel.plots.tables",
    "heatmap_figure": "alphasel.plots.tables",
    "layers_figure": "alphasel.plots.tables",
    "kinds_figure": "alphasel.plots.tables",
    "difference_figure": "alphasel.plots.tables",
    "save_figure": "alphasel.plots.output",
    "TrainConfig": "alphasel.training.config",
    "RunRecord": "alphasel.training.record",
    "list_runs": "alphasel.training.record",
}

__all__ = sorted([*_EXPORTS, "train"]) + ["__version__"]

#: Modules that moved, old → new import path: importing an old one says where it went.
MOVED_MODULES = {
    "alphasel.train": "alphasel.training",
    "alphasel.training_plots": "alphasel.plots.training",
    "alphasel.study.figures": "alphasel.plots.comparison",
    "alphasel.study.report": "alphasel.plots.report",
}


def train(*args, **kwargs):
    """Fine-tune a plan and record the run: :func:`alphasel.training.trainer.train`."""
    from alphasel.training.trainer import train as run_training

    return run_training(*args, **kwargs)


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Refuses an import of a module that moved, naming where it is now. An import of
    ``alphasel.train.*`` must fail rather than find a package: the import system would bind it
    to ``alphasel.train`` and shadow the training function."""

    def find_spec(self, fullname, path=None, target=None):
        for old, new in MOVED_MODULES.items():
            if fullname == old or fullname.startswith(old + "."):
                moved = new + fullname[len(old):]
                what = (" (alphasel.train is the training function)"
                        if old == "alphasel.train" else "")
                raise ModuleNotFoundError(f"{fullname} has moved to {moved}{what}: import "
                                          f"{moved} instead", name=fullname)
        return None


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alphasel' has no attribute '{name}'")


def __dir__() -> list[str]:
    return __all__
