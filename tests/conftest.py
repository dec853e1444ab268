"""Shared builders for tests: tiny checkpoints written to tmp dirs, never downloaded."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch


def tiny_llama(layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """An in-memory Llama with random weights (hidden 32, GQA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    return LlamaForCausalLM(config).eval()


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]],
               architecture: str = "llama") -> Path:
    """A GGUF file holding ``tensors`` (name → (float32 array rows×cols, type))."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(2)
    writer.add_token_list(["<s>", "</s>", "hello"])  # an array field the parser must skip
    for name, (array, qtype) in tensors.items():
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, gguf.quants.quantize(array, qtype))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(autouse=True)
def alpha_cache(tmp_path_factory, monkeypatch) -> Path:
    """A private, empty result cache for every test: no test reads or writes the user's cache
    (CI machines start clean, and tests must not share state through it)."""
    folder = tmp_path_factory.mktemp("alpha-cache")
    monkeypatch.setenv("ALPHASEL_CACHE", str(folder))
    return folder


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """A private runs/ directory for commands that write by default."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("ALPHASEL_RUNS", str(folder))
    return folder


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty HF hub cache, offline: nothing can be downloaded."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
