"""In-memory torch modules: every module with a 2-D floating-point ``weight`` parameter, and
bitsandbytes' 4-bit layers (their weights dequantized)."""

from __future__ import annotations

import numpy as np
import torch

from alphasel.errors import SourceError
from alphasel.sources.base import MatrixRef, WeightSource, reading_order


class ModuleSource(WeightSource):
    """Reads weights straight from a live ``nn.Module`` (Linear, Embedding, GPT-2 Conv1D,
    bitsandbytes Linear4bit, …)."""

    format = "module"

    def __init__(self, module: torch.nn.Module, model_id: str | None = None) -> None:
        config = getattr(module, "config", None)
        self.model_id = model_id or getattr(config, "name_or_path", "") or type(module).__name__
        self.location = f"in-memory {type(module).__name__}"
        self._weights: dict[str, torch.Tensor] = {}
        refs = []
        for name, child in module.named_modules():
            weight = getattr(child, "weight", None)
            if not name or not isinstance(weight, torch.Tensor):
                continue
            shape = _matrix_shape(weight)
            if shape is not None:
                self._weights[name] = weight
                refs.append(MatrixRef(name, shape, name))
        _refuse_meta(self.model_id, [name for name, weight in self._weights.items()
                                     if weight.is_meta])
        self._refs = reading_order(refs)

    def load(self, ref: MatrixRef) -> np.ndarray:
        weight = self._read(ref)
        if weight.dtype not in (torch.float32, torch.float64):
            weight = weight.float()
        return weight.cpu().numpy()

    def load_stored(self, ref: MatrixRef) -> torch.Tensor:
        """The weight where it lives, in its own dtype (a 4-bit one in the dtype it was
        quantized from): a model already on the GPU is analysed there without a round trip
        through host memory."""
        return self._read(ref)

    def _read(self, ref: MatrixRef) -> torch.Tensor:
        weight = self._weights[ref.key]
        state = _four_bit_state(weight)  # read before detach(), which drops it
        if state is None:
            return weight.detach()
        # Importable wherever a 4-bit weight exists: bitsandbytes made it.
        from bitsandbytes.functional import dequantize_4bit

        return dequantize_4bit(weight.detach(), state)


def _four_bit_state(weight: torch.Tensor) -> object | None:
    """The quantization state of a bitsandbytes 4-bit weight (``Params4bit`` once quantized,
    i.e. moved to a device): its data is two entries a byte in a uint8 (or ``quant_storage``)
    column and its matrix shape is the state's. None for any other weight."""
    if not getattr(weight, "bnb_quantized", False):
        return None
    return getattr(weight, "quant_state", None)


def _matrix_shape(weight: torch.Tensor) -> tuple[int, int] | None:
    """(rows, cols) of a weight the source analyses: a 2-D floating-point one or a 4-bit one.
    Other weights (1-D scales, integer tensors) are not matrices to fit."""
    state = _four_bit_state(weight)
    if state is not None:
        return tuple(state.shape)
    if weight.ndim == 2 and weight.is_floating_point():
        return tuple(weight.shape)
    return None


def _refuse_meta(model_id: str, names: list[str]) -> None:
    """Weights on the meta device hold no values (accelerate's offloading leaves them there and
    loads them only inside forward), so there is nothing to analyse in memory."""
    if not names:
        return
    others = f" and {len(names) - 1} more" if len(names) > 1 else ""
    raise SourceError(f"module '{names[0]}'{others} of {model_id} has its weight on the meta "
                      "device (offloaded, e.g. by device_map='auto'): load the model without "
                      "device_map offloading, or pass its checkpoint path instead of the module")
