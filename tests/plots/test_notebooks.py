"""Notebooks are committed clean and run headless without a failing cell."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
#: Seconds any one cell may take; SmolLM2's analysis is the slow one (about a minute on 2 CPUs).
CELL_TIMEOUT = 900


def test_the_alpha_notebook_is_there():
    assert "alpha_surface.ipynb" in [path.name for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "a notebook without code cells is not worth executing in CI"
    dirty = [n for n, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not dirty, f"clear the outputs of code cells {dirty} before committing"


def test_alpha_notebook_analyses_both_packaged_models():
    source = "\n".join(cell.source for cell in
                       nbformat.read(NOTEBOOKS[0].with_name("alpha_surface.ipynb"), 4).cells)
    for call in ('analyze("smollm2", progress=False)', 'analyze("minilm", progress=False)',
                 "surface_figure(", "layers_figure(", "kinds_figure("):
        assert call in source


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_without_error(path, tmp_path):
    from nbclient import NotebookClient

    # A copy in a temp folder: outputs and anything a cell writes stay out of the repository.
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    notebook = nbformat.read(copy, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.output_type == "error"]
    assert not errors


def test_study_notebook_runs_a_study_and_shows_its_table_and_figures():
    source = "\n".join(cell.source for cell in
                       nbformat.read(NOTEBOOKS[0].with_name("selection_study.ipynb"), 4).cells)
    for call in ("create_study(", "run_study(", "comparison_table(", "final_loss_figure(",
                 "loss_curves_figure(", "cost_figure(", "alpha_shift_figure(", "ALPHASEL_STUDY"):
        assert call in source
