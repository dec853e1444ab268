"""In-memory torch modules: every module with a 2-D floating-point ``weight`` parameter."""

from __future__ import annotations

import numpy as np
import torch

from alphasel.sources.base import MatrixRef, WeightSource, reading_order


class ModuleSource(WeightSource):
    """Reads weights straight from a live ``nn.Module`` (Linear, Embedding, GPT-2 Conv1D, …)."""

    format = "module"

    def __init__(self, module: torch.nn.Module, model_id: str | None = None) -> None:
        config = getattr(module, "config", None)
        self.model_id = model_id or getattr(config, "name_or_path", "") or type(module).__name__
        self.location = f"in-memory {type(module).__name__}"
        self._weights: dict[str, torch.Tensor] = {}
        refs = []
        for name, child in module.named_modules():
            weight = getattr(child, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
                continue
            if not weight.is_floating_point() or not name:
                continue
            self._weights[name] = weight
            refs.append(MatrixRef(name, tuple(weight.shape), name))
        self._refs = reading_order(refs)

    def load(self, ref: MatrixRef) -> np.ndarray:
        weight = self._weights[ref.key].detach()
        if weight.dtype not in (torch.float32, torch.float64):
            weight = weight.float()
        return weight.cpu().numpy()

    def load_stored(self, ref: MatrixRef) -> torch.Tensor:
        """The weight where it lives, in its own dtype: a model already on the GPU is analysed
        there without a round trip through host memory."""
        return self._weights[ref.key].detach()
