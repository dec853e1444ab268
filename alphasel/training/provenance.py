"""What a run records about itself in config.json: enough to know what ran and to run it
again (``--resume`` reads it back)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from alphasel.plan import InjectionPlan
from alphasel.provenance import package_versions, utc_now
from alphasel.training.config import TrainConfig
from alphasel.training.data import TrainData
from alphasel.training.distributed import batch_record
from alphasel.training.models import ModelInfo
from alphasel.training.precision import Precision

#: Versions of the packages that decide a run's numbers, recorded in config.json.
TRAINING_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate",
                     "bitsandbytes")


def resolved(spec: Any) -> Any:
    """An existing local path as an absolute path (so --resume works from any directory);
    anything else (hub id, alias, built-in name, module) unchanged."""
    if isinstance(spec, str | Path) and Path(spec).expanduser().exists():
        return str(Path(spec).expanduser().resolve())
    return spec


def config_record(model: Any, revision: str | None, info: ModelInfo, data: TrainData,
                  plan: InjectionPlan | None, config: TrainConfig, command: list[str] | None,
                  world_size: int, prompts: list[str] | None,
                  precision: Precision) -> dict[str, Any]:
    """config.json's fields (the record kind and schema version are the writer's): with the
    resolved dtypes and the batch as every process sees it."""
    return {
        "model": None if isinstance(model, torch.nn.Module) else resolved(model),
        "model_id": info.model_id, "revision": info.revision, "model_location": info.location,
        "model_format": info.format, "data": data.name, "data_source": resolved(data.name),
        "data_kind": data.kind, "data_fingerprint": data.fingerprint,
        "data_description": data.description, "data_details": data.details,
        "labels": data.labels, "method": config.method,
        "scheme": plan.scheme if plan else None, "k": plan.k if plan else None,
        "config": config.to_dict(), "prompts": prompts, "world_size": world_size,
        "batch": batch_record(config.batch_size, config.grad_accum, world_size),
        "precision": precision.to_dict(),
        "versions": package_versions(TRAINING_PACKAGES),
        "command": command if command is not None else sys.argv,
        "created": utc_now(),
    }
