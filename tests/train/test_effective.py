"""Effective weights of LoRA/rsLoRA/DoRA layers, checked against PEFT's merge and forward."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import LORA_VARIANTS, adapted_model
from peft import PeftModel

from alphasel.errors import AlphaselError
from alphasel.training.effective import EffectiveWeightError, effective_weight, effective_weights


def _tokens() -> torch.Tensor:
    return torch.arange(12).reshape(2, 6) % 50 + 3


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("variant", list(LORA_VARIANTS))
def test_effective_weight_matches_merge_and_leaves_model_alone(arch: str, variant: str) -> None:
    peft_model, layers = adapted_model(arch, variant, trained=True)
    with torch.no_grad():
        before = peft_model(_tokens()).logits.clone()
    effective = effective_weights(peft_model, list(layers))
    with torch.no_grad():
        after = peft_model(_tokens()).logits
    assert torch.equal(before, after)
    assert isinstance(peft_model, PeftModel)
    assert all(not layer.merged for layer in layers.values())

    merged = copy.deepcopy(peft_model).merge_and_unload()
    for name, weight in effective.items():
        base = layers[name].get_base_layer().weight
        assert (weight - base).abs().max() > 1e-3  # the adapter really changes W
        assert (weight - merged.get_submodule(name).weight).abs().max() <= 1e-5, name


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_effective_weight_reproduces_layer_forward(arch: str, variant: str) -> None:
    # Independent of PEFT's merge code: the eval forward of the adapted layer is affine in x.
    _, layers = adapted_model(arch, variant, trained=True)
    generator = torch.Generator().manual_seed(2)
    for name, layer in layers.items():
        weight = effective_weight(layer)
        if layer.fan_in_fan_out:
            weight = weight.T  # to out×in
        x_in = torch.randn(5, weight.shape[1], generator=generator)
        bias = layer.get_base_layer().bias
        with torch.no_grad():
            expected = layer(x_in)
        got = x_in @ weight.T + (0 if bias is None else bias.detach())
        assert (got - expected).abs().max() <= 1e-5, name


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("variant", list(LORA_VARIANTS))
def test_default_init_gives_the_base_weight(arch: str, variant: str) -> None:
    _, layers = adapted_model(arch, variant, trained=False)
    for layer in layers.values():
        base = layer.get_base_layer().weight.detach()
        assert (effective_weight(layer) - base).abs().max() <= 1e-6


def test_non_adapted_module_returns_its_own_weight_as_a_copy() -> None:
    peft_model, _ = adapted_model("llama", "lora", trained=True)
    name = "model.layers.1.self_attn.k_proj"
    own = peft_model.get_base_model().get_submodule(name).weight
    weight = effective_weights(peft_model, [name])[name]
    assert torch.equal(weight, own.detach())
    assert not weight.requires_grad
    weight.add_(1.0)
    assert not torch.equal(weight, own.detach())


def test_unknown_name_and_missing_adapter_raise() -> None:
    peft_model, layers = adapted_model("llama", "lora", trained=False)
    with pytest.raises(EffectiveWeightError, match="model.layers.9.self_attn.q_proj"):
        effective_weights(peft_model, ["model.layers.9.self_attn.q_proj"])
    name = next(iter(layers))
    with pytest.raises(AlphaselError, match="'other'"):
        effective_weights(peft_model, [name], adapter_name="other")
    with pytest.raises(ValueError, match="2-D weight"):
        effective_weight(torch.nn.ReLU())


def test_conv1d_keeps_the_stored_in_by_out_layout() -> None:
    _, layers = adapted_model("gpt2", "dora", trained=True)
    c_attn = layers["transformer.h.0.attn.c_attn"]
    weight = effective_weight(c_attn)
    assert weight.shape == c_attn.get_base_layer().weight.shape == (32, 96)
    assert weight.dtype == torch.float32 and weight.device.type == "cpu"
