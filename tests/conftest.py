"""Fixtures every test may use; the builders they share are in helpers.py. Nothing here
downloads anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import byte_tokenizer


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


@pytest.fixture(scope="module")
def tokenizer():
    """The byte-level test tokenizer, padding with EOS as SmolLM2 does."""
    return byte_tokenizer(pad_is_eos=True)
