"""Hugging Face hub ids: safetensors (or .bin) and config only, through huggingface_hub's cache.

HF_HOME / HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE are read when a model is resolved, not at
import, so they can be set per call (and per test).
"""

from __future__ import annotations

import os
from pathlib import Path

from alphasel.errors import SourceError

_SAFETENSORS_FILES = ["*.safetensors", "model.safetensors.index.json", "config.json"]
_BIN_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json", "config.json"]
_TRUE = {"1", "true", "yes", "on"}


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub would use: HF_HUB_CACHE, else HF_HOME/hub, else default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"))
    home = os.environ.get("HF_HOME") or cache / "huggingface"
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache_dir()
    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache,
            local_files_only=hub_offline(), token=os.environ.get("HF_TOKEN") or None,
        )
    except GatedRepoError as err:
        raise SourceError(f"hub model '{repo_id}' is gated: accept its terms on the hub and set "
                          "HF_TOKEN to a token of that account") from err
    except RevisionNotFoundError as err:
        raise SourceError(f"hub model '{repo_id}' has no revision '{revision}': pass an "
                          "existing branch, tag or commit with --revision") from err
    except RepositoryNotFoundError as err:
        raise SourceError(f"hub model '{repo_id}' not found: check the id, or set HF_TOKEN if "
                          "it is private; for a local checkpoint pass its path") from err
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
        raise SourceError(f"hub model '{repo_id}' (revision {revision or 'main'}) is not in the "
                          f"cache at '{cache}' and {why}: download it where there is network "
                          f"(`hf download {repo_id}`), point HF_HOME at a cache that has it, "
                          "or pass a local path") from err
    except (OSError, ValueError) as err:  # network failures surface as OSError subclasses
        raise SourceError(f"could not fetch hub model '{repo_id}' ({err}): check the network "
                          "or set HF_HUB_OFFLINE=1 to use the cache only") from err
    return Path(folder)


def resolve_hub_model(repo_id: str, revision: str | None = None) -> tuple[Path, str | None]:
    """A local snapshot folder holding the model's weights, and the commit it resolved to.

    Safetensors are preferred; a repository with none falls back to pytorch_model*.bin.
    """
    folder = snapshot(repo_id, revision, _SAFETENSORS_FILES)
    if not any(folder.glob("*.safetensors")):
        folder = snapshot(repo_id, revision, _BIN_FILES)
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise SourceError(f"hub model '{repo_id}' has no safetensors or pytorch_model*.bin "
                          "weights: pass a local checkpoint or a GGUF file instead")
    # The snapshot folder's name is the commit hash huggingface_hub resolved the revision to.
    return folder, folder.name
