"""The weight a (possibly LoRA/DoRA-adapted) module effectively applies, without merging.

Alpha "after training" is measured on W + ΔW (DoRA: the magnitude-rescaled W + ΔW). PEFT's
merge/unmerge mutates the live model and has had bugs for DoRA and GPT-2's Conv1D, so the
effective weight is rebuilt here from the adapter tensors and the model is only read.
"""

from __future__ import annotations

import torch
from torch import nn

from alphasel.errors import AlphaselError
from alphasel.sources.adapter import effective_matrix


class EffectiveWeightError(AlphaselError):
    """A module has no usable 2-D weight, lacks the adapter, or the model lacks the module."""


def effective_weight(layer: nn.Module, adapter_name: str = "default",
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Return the weight ``layer`` effectively applies, in its base layer's stored layout.

    ``layer`` is a PEFT LoRA layer (DoRA included) or a plain module with a 2-D ``weight``.
    The result is a detached float32 tensor on ``device``: out×in for ``nn.Linear``, in×out for
    GPT-2's ``Conv1D`` (``fan_in_fan_out``). Dropout and disabled adapters are ignored (eval
    semantics); the live model is never modified.
    """
    if not _is_lora_layer(layer):
        return _plain_weight(layer, type(layer).__name__, device).clone()

    base_layer = layer.get_base_layer()
    stored = _plain_weight(base_layer, f"base layer of {type(layer).__name__}", device)
    if adapter_name in getattr(layer, "lora_embedding_A", {}):
        raise EffectiveWeightError(
            f"{type(layer).__name__} adapts an embedding, which has no effective-weight rule "
            f"here; leave embeddings out of the modules you measure"
        )
    if adapter_name not in layer.lora_A:
        raise EffectiveWeightError(
            f"{type(layer).__name__} has no LoRA adapter {adapter_name!r} (it has "
            f"{sorted(layer.lora_A.keys())}); pass one of those as adapter_name"
        )
    if adapter_name in getattr(layer, "merged_adapters", []):
        # Already folded into the base weight by PEFT: what it stores is what it applies.
        return stored.clone()

    magnitudes = getattr(layer, "lora_magnitude_vector", {})
    magnitude = magnitudes[adapter_name].weight if adapter_name in magnitudes else None
    # PEFT's scaling already holds lora_alpha/r (rsLoRA: lora_alpha/√r).
    return effective_matrix(stored, layer.lora_A[adapter_name].weight,
                            layer.lora_B[adapter_name].weight, float(layer.scaling[adapter_name]),
                            magnitude, bool(getattr(layer, "fan_in_fan_out", False)), device)


def effective_weights(
    peft_model: nn.Module, names: list[str], adapter_name: str = "default",
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Map base-model module names to their effective weights (adapted or not).

    Names are those of the model before PEFT wrapped it (``model.layers.1.self_attn.q_proj``),
    without PEFT's ``base_model.model.`` prefix.
    """
    unwrap = getattr(peft_model, "get_base_model", None)
    base_model = unwrap() if unwrap is not None else peft_model
    weights: dict[str, torch.Tensor] = {}
    for name in names:
        try:
            module = base_model.get_submodule(name)
        except AttributeError:
            raise EffectiveWeightError(
                f"model has no module {name!r}; use a name from the unwrapped model's "
                f"named_modules() (without the 'base_model.model.' prefix)"
            ) from None
        try:
            weights[name] = effective_weight(module, adapter_name, device)
        except EffectiveWeightError as error:
            raise EffectiveWeightError(f"module {name!r}: {error}") from None
    return weights


def _is_lora_layer(module: nn.Module) -> bool:
    # Imported lazily so that analysis-only code paths never import peft.
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def is_packed(weight: object) -> bool:
    """Whether ``weight`` holds bitsandbytes-packed blocks (4- or 8-bit), not plain values."""
    return hasattr(weight, "quant_state") or type(weight).__name__ in ("Params4bit",
                                                                       "Int8Params")


def _plain_weight(module: nn.Module, describe: str,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if is_packed(weight):
        # A bitsandbytes base (QLoRA) stores packed blocks; PEFT knows how to unpack them.
        from peft.utils.integrations import dequantize_module_weight

        weight = dequantize_module_weight(module)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise EffectiveWeightError(
            f"{describe} has no 2-D weight tensor; pass a linear-like module (nn.Linear, "
            f"Conv1D) or a LoRA layer wrapping one"
        )
    return weight.detach().to(device, torch.float32)
