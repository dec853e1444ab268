"""The package's own shape: no import cycle under alphasel/, and imports point down the stages
(DESIGN.md; STYLE.md habit 13), lazy imports inside functions included."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import alphasel

ROOT = Path(alphasel.__file__).resolve().parent
#: The stages, lowest first: a module may import from its own stage and the ones before.
STAGES = [
    ("foundation", ["alphasel.errors", "alphasel.atomic", "alphasel.jsonfiles", "alphasel.paths",
                    "alphasel.provenance", "alphasel.layout", "alphasel.columns"]),
    ("sources", ["alphasel.sources"]),
    ("spectra", ["alphasel.lapack", "alphasel.spectra", "alphasel.powerlaw", "alphasel.snr",
                 "alphasel.downsample"]),
    ("analyzer", ["alphasel.analyzer", "alphasel.cache"]),
    ("table", ["alphasel.table"]),
    ("plan", ["alphasel.plan", "alphasel.budget", "alphasel.planner", "alphasel.exports"]),
    ("training", ["alphasel.training"]),
    ("study", ["alphasel.study"]),
    ("plots", ["alphasel.plots"]),
    ("cli", ["alphasel.cli", "alphasel.__main__"]),
]


def stage(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(STAGES):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    return None


def import_graph() -> dict[str, set[str]]:
    """Module → the alphasel modules it imports (anywhere in its code)."""
    trees = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        module = ".".join(parts).removesuffix(".__init__")
        trees[module] = ast.parse(path.read_text())
    graph = {}
    for module, tree in trees.items():
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    node.module.startswith("alphasel"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in trees else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names
                             if alias.name.startswith("alphasel."))
        graph[module] = {name for name in found if name in trees and name not in (module,
                                                                                  "alphasel")}
    return graph


def test_every_module_has_a_stage():
    assert [module for module in import_graph() if module != "alphasel"
            and stage(module) is None] == []


def test_imports_point_down_the_stages():
    upward = [f"{module} ({STAGES[stage(module)][0]}) imports {imported} "
              f"({STAGES[stage(imported)][0]})"
              for module, imports in import_graph().items() if module != "alphasel"
              for imported in imports if stage(imported) > stage(module)]
    assert upward == []


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycles.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_training_function_is_not_shadowed_and_old_paths_say_where_they_went():
    training = importlib.import_module("alphasel.training")
    assert callable(alphasel.train) and not isinstance(alphasel.train, type(training))
    assert callable(training.train)
    with pytest.raises(ImportError, match="alphasel.train has moved to alphasel.training"):
        importlib.import_module("alphasel.train.record")
    assert callable(alphasel.train)
    with pytest.raises(ImportError, match="alphasel.plots.training"):
        importlib.import_module("alphasel.training_plots")
