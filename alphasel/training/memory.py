"""Memory by component, the memory log of the experiments alphasel grew from: per run, the bytes
of frozen weights, trainable weights, gradients, optimizer state, activations and inputs, each
measured on the tensors themselves (not estimated from a formula), beside the measured peak.

- weights: every parameter's storage, frozen or trainable (a 4-bit weight's packed bytes);
- gradients: the ``.grad`` tensors just before an optimizer step (all accumulated);
- optimizer state: the tensors the optimizer holds just after a step (Adam's two moments);
- activations: the largest set of tensors saved for backward by one forward pass, counted by
  ``torch.autograd.graph.saved_tensors_hooks`` as autograd saves them, each storage once and the
  parameters left out (they are weights); under gradient checkpointing, what the checkpoints
  keep;
- inputs: the largest batch's tensors (ids, masks, labels).

The components are this process's (one rank's under torchrun) and do not sum to the peak: the
peak also holds the allocator's cache, temporaries of the backward pass, the framework itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import TrainerCallback

from alphasel.training.record import COMPONENTS

_MB = 2**20


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage().data_ptr()


def _storage_bytes(tensors: Iterator[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views share one)."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        seen.setdefault(_storage_key(tensor), tensor.untyped_storage().nbytes())
    return sum(seen.values())


class MemoryCallback(TrainerCallback):
    """Measures the components during training (see the module docstring); the trainer's
    :class:`MeasuresActivations` reports each forward pass's saved tensors and batch here."""

    def __init__(self) -> None:
        self.gradients = self.optimizer_state = self.activations = self.inputs = 0
        self.frozen = self.trainable = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       **kwargs: Any) -> None:
        parameters = list(model.parameters()) if model is not None else []
        self.frozen = sum(_bytes(p) for p in parameters if not p.requires_grad)
        self.trainable = sum(_bytes(p) for p in parameters if p.requires_grad)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None,
                              **kwargs: Any) -> None:
        if model is not None:
            grads = sum(_bytes(p.grad) for p in model.parameters() if p.grad is not None)
            self.gradients = max(self.gradients, grads)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                          **kwargs: Any) -> None:
        if optimizer is None:
            return
        held = (value for entry in getattr(optimizer, "state", {}).values()
                for value in entry.values() if isinstance(value, torch.Tensor))
        self.optimizer_state = max(self.optimizer_state, _storage_bytes(held))

    @contextlib.contextmanager
    def forward(self, model: torch.nn.Module, inputs: dict) -> Iterator[None]:
        """Count the tensors autograd saves inside this block (one forward pass) and the
        batch ``inputs``."""
        parameters = {_storage_key(p) for p in model.parameters()}
        saved: dict[tuple[str, int], int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            key = _storage_key(tensor)
            if key not in parameters:
                saved.setdefault(key, tensor.untyped_storage().nbytes())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield
        self.activations = max(self.activations, sum(saved.values()))
        batch = (value for value in inputs.values() if isinstance(value, torch.Tensor))
        self.inputs = max(self.inputs, _storage_bytes(batch))

    def breakdown(self, peak: dict[str, float]) -> dict[str, float]:
        """summary.json's ``memory_breakdown``: the components in MB, and the measured peak
        (``peak_memory`` from :mod:`alphasel.training.callbacks`)."""
        measured = (self.frozen, self.trainable, self.gradients, self.optimizer_state,
                    self.activations, self.inputs)
        result = {key: round(value / _MB, 4) for key, value in zip(COMPONENTS, measured,
                                                                    strict=True)}
        result["peak_mb"] = peak.get("peak_memory_mb")
        return result


class MeasuresActivations:
    """Trainer mixin: each training forward pass runs inside its :class:`MemoryCallback`'s
    :meth:`~MemoryCallback.forward` (the loss and its graph are built there)."""

    def measuring(self, model: torch.nn.Module, inputs: dict) -> Any:
        """The context a training forward pass runs in: counted when a MemoryCallback is
        registered and gradients are on (not during evaluation)."""
        callbacks = self.callback_handler.callbacks  # type: ignore[attr-defined]
        recorder = next((item for item in callbacks if isinstance(item, MemoryCallback)), None)
        if recorder is None or not model.training or not torch.is_grad_enabled():
            return contextlib.nullcontext()
        return recorder.forward(model, inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self.measuring(model, inputs):
            return super().compute_loss(  # type: ignore[misc]
                model, inputs, return_outputs=return_outputs,
                num_items_in_batch=num_items_in_batch)
