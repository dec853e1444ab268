"""The dtype policy: what the frozen base is held in, what trains, and what computes.

    precision = resolve_precision(config, stored=torch.bfloat16, on_gpu=True)
    precision.base, precision.autocast    # torch.bfloat16, "bf16"

Whatever trains (adapters, a classifier's head, every weight under ``--method full``, the
matrices folded at re-selection) is held in float32: Adam's small steps survive only in float32
master weights (a 0.3%-relative update rounded into bf16 loses about half of itself). Only a
frozen base may stay in half precision, and then the forward pass computes in that precision's
autocast (a half base is never mixed with float32 compute by accident). ``--dtype auto`` holds
the base in the precision --bf16/--fp16 ask for, and without them keeps a half-precision
checkpoint's own dtype on a GPU (half the memory for the frozen weights) and loads float32 on a
CPU, where half precision without autocast is emulated on CPUs without AVX512-BF16/AMX.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: --dtype's values: the base model's dtype, or ``auto`` (the policy above).
DTYPES = ("auto", "float32", "bfloat16", "float16")
_TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Autocast name (the --bf16/--fp16 flags) of each half-precision dtype, and back.
_AUTOCAST = {"bfloat16": "bf16", "float16": "fp16"}
_AUTOCAST_DTYPE = {flag: dtype for dtype, flag in _AUTOCAST.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Precision:
    """A run's resolved dtypes, recorded in config.json."""

    stored: str | None
    """The checkpoint's own dtype (its config.json), when it says."""
    base: str
    """What the frozen base is loaded and held in."""
    autocast: str | None
    """``bf16``, ``fp16`` or None: the mixed precision the forward pass computes in."""
    trainable: str = "float32"
    """What every trained parameter is held in."""

    @property
    def base_dtype(self) -> torch.dtype:
        return _TORCH[self.base]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The torch dtype of the autocast (for code outside the Trainer's forward passes)."""
        return None if self.autocast is None else _TORCH[_AUTOCAST_DTYPE[self.autocast]]

    def to_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "base": self.base, "trainable": self.trainable,
                "autocast": self.autocast}


def half_autocast(dtype: str) -> str | None:
    """The autocast a base held in ``dtype`` computes in (None for float32)."""
    return _AUTOCAST.get(dtype)


def autocast_flag(config: Any) -> str | None:
    """The mixed precision --bf16/--fp16 ask for."""
    return "bf16" if config.bf16 else "fp16" if config.fp16 else None


def resolve_precision(config: Any, stored: torch.dtype | None, on_gpu: bool,
                      bf16_supported: bool = True) -> Precision:
    """The dtypes a run with ``config`` (a TrainConfig) uses for a checkpoint stored in
    ``stored``, by one rule on every machine: ``--dtype`` when given; else float32 for
    ``--method full``; else the precision --bf16/--fp16 asks for (float32 when the checkpoint
    is stored in the other half precision: bf16 weights can overflow fp16); else, on a GPU, a
    half-precision checkpoint's own dtype (bf16 only where the GPU supports it); else float32.
    A half base computes in its own autocast (TrainConfig refuses a --dtype that contradicts
    --bf16/--fp16)."""
    stored_name = dtype_name(stored) if stored is not None else None
    asked = autocast_flag(config)
    if config.dtype != "auto":
        base = config.dtype
    elif config.method == "full":
        base = "float32"  # every weight trains
    elif asked is not None:
        other_half = stored_name in _AUTOCAST and _AUTOCAST[stored_name] != asked
        base = "float32" if other_half else _AUTOCAST_DTYPE[asked]
    elif on_gpu and stored_name in _AUTOCAST and (stored_name != "bfloat16" or bf16_supported):
        base = stored_name
    else:
        base = "float32"
    return Precision(stored_name, base, half_autocast(base) or asked)


def checkpoint_dtype(folder: Path, gguf_file: str | None) -> torch.dtype | None:
    """The dtype a checkpoint folder's config.json says its weights are stored in (``dtype``,
    or transformers 4's ``torch_dtype``); GGUF weights are dequantized to float32."""
    if gguf_file:
        return torch.float32
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype")
    return _TORCH.get(name) if isinstance(name, str) else None


def module_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of an in-memory model's floating-point parameters (the most common one)."""
    counts: dict[torch.dtype, int] = {}
    for parameter in model.parameters():
        if parameter.is_floating_point():
            counts[parameter.dtype] = counts.get(parameter.dtype, 0) + parameter.numel()
    return max(counts, key=counts.__getitem__) if counts else None


def hold_trainable_in_float32(model: torch.nn.Module) -> None:
    """Every parameter that trains, as float32 (PEFT upcasts its adapters itself, but not a
    classifier's head or DoRA's magnitudes under every version, nor full fine-tuning)."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point() \
                and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
