"""PEFT LoRA / rsLoRA / DoRA adapters laid over a base checkpoint, read from their files.

    alphasel analyze smollm2 --adapter runs/train/<id>/adapter

Each adapted matrix is read as its effective weight W + ΔW (DoRA: rescaled), computed from
``adapter_config.json`` and the adapter's tensors, whatever tool wrote them; every other matrix
reads as in the base. No model is built and nothing is merged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alphasel.errors import SourceError
from alphasel.sources.base import MatrixRef, WeightSource, file_identity

_PEFT_PREFIX = "base_model.model."
_TENSOR = re.compile(r"^(?P<name>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|"
                     r"lora_magnitude_vector(?:\.weight)?|lora_embedding_A|lora_embedding_B)$")


def effective_matrix(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                     scaling: float, magnitude: torch.Tensor | None = None,
                     fan_in_fan_out: bool = False,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """W + scaling·B·A, DoRA-rescaled when ``magnitude`` is given, in ``weight``'s stored layout
    (in×out when ``fan_in_fan_out``, as GPT-2's Conv1D), as float32 on ``device``.

    float64 inside, because ΔW is small next to W: in float32 the sum would round away much of
    the update being measured. DoRA (PEFT's dora.py): W' = m / ‖W + ΔW‖ · (W + ΔW), the norm of
    each output row of the out×in matrix; m starts at ‖W‖'s row norms, so B = 0 gives W."""
    full = weight.detach().to(device, torch.float64)
    if fan_in_fan_out:
        full = full.T
    delta = lora_b.detach().to(device, torch.float64) @ lora_a.detach().to(device, torch.float64)
    combined = full + float(scaling) * delta
    if magnitude is not None:
        norms = torch.linalg.norm(combined, dim=1)
        combined = combined * (magnitude.detach().to(device, torch.float64) / norms).unsqueeze(1)
    if fan_in_fan_out:
        combined = combined.T
    return combined.to(torch.float32).contiguous()


@dataclass(frozen=True)
class AdapterMatrix:
    """One adapted matrix's adapter tensors."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scaling: float
    magnitude: torch.Tensor | None


def _pattern_value(patterns: dict, name: str, default: float) -> float:
    """PEFT's rank/alpha patterns: a key matches a module name that ends in it (regex)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def read_adapter(folder: str | Path) -> tuple[dict, dict[str, AdapterMatrix]]:
    """(adapter_config.json, module name → its adapter tensors) of a PEFT LoRA adapter."""
    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise SourceError(f"'{folder}' is not a PEFT adapter (no adapter_config.json): pass the "
                          "directory a PEFT model was saved to (save_pretrained)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise SourceError(f"'{config_path}' is not valid JSON ({err}): re-save the adapter") \
            from err
    if config.get("peft_type") != "LORA":
        raise SourceError(f"'{folder}' holds a {config.get('peft_type')} adapter: only LoRA, "
                          "rsLoRA and DoRA adapters have an effective weight here")
    tensors = _adapter_tensors(folder)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _TENSOR.match(key)
        if match is None:
            continue  # modules_to_save copies and other extras are not LoRA matrices
        name = match["name"].removeprefix(_PEFT_PREFIX)
        if match["part"].startswith("lora_embedding"):
            raise SourceError(f"adapter '{folder}' adapts the embedding {name}, which has no "
                              "effective-weight rule here: analyze adapters of linear layers")
        parts.setdefault(name, {})[match["part"].split(".")[0]] = tensor
    if not parts:
        raise SourceError(f"adapter '{folder}' holds no LoRA matrices: re-save it with PEFT")
    matrices = {}
    for name, found in parts.items():
        if "lora_A" not in found or "lora_B" not in found:
            raise SourceError(f"adapter '{folder}' has lora_A or lora_B missing for {name}: "
                              "re-save the adapter")
        rank = found["lora_A"].shape[0]
        lora_alpha = _pattern_value(config.get("alpha_pattern"), name, config["lora_alpha"])
        root = np.sqrt(rank) if config.get("use_rslora") else rank
        matrices[name] = AdapterMatrix(found["lora_A"], found["lora_B"], lora_alpha / root,
                                       found.get("lora_magnitude_vector"))
    return config, matrices


def _weights_file(folder: Path) -> Path | None:
    """The adapter's tensor file: adapter_model.safetensors, else adapter_model.bin."""
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = _weights_file(folder)
    if path is None:
        raise SourceError(f"'{folder}' has adapter_config.json but no adapter_model.safetensors "
                          "or .bin: copy the whole adapter directory")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt files raise many types
        raise SourceError(f"cannot read the adapter weights in '{folder}' ({err}): re-save the "
                          "adapter") from err


class AdapterOverlay(WeightSource):
    """A base checkpoint whose adapted matrices read as their effective weights.

    Cached like its base: a matrix the adapter leaves alone has the base's identity (and
    shares its cache entries, the values being the same), an adapted one adds the identity of
    the adapter's two files (the config holds the scaling, the tensor file A, B and DoRA's
    magnitude). Over a base without an identity (an in-memory module) nothing is cached.
    """

    def __init__(self, base: WeightSource, folder: str | Path) -> None:
        self._base = base
        self.folder = Path(folder)
        self.model_id, self.revision = base.model_id, base.revision
        self.location = f"{base.location} + adapter {self.folder}"
        self.format = f"{base.format}+lora"
        # Taken before the files are read (see file_identity); absent files fail just below.
        self._files = {"config": _identity_if_file(self.folder / "adapter_config.json"),
                       "weights": _identity_if_file(_weights_file(self.folder))}
        self.config, self._adapters = read_adapter(self.folder)
        self.fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        refs = {ref.name: ref for ref in base.matrices()}
        missing = sorted(name for name in self._adapters if name not in refs)
        if missing:
            raise SourceError(f"adapter '{self.folder}' adapts {missing[0]}, which the base "
                              f"model '{base.model_id}' lacks ({len(missing)} of "
                              f"{len(self._adapters)} missing): pass the base model the adapter "
                              f"was trained on ({self.config.get('base_model_name_or_path')})")
        for name, adapter in self._adapters.items():
            rows, cols = refs[name].shape
            out_features, in_features = (cols, rows) if self.fan_in_fan_out else (rows, cols)
            if adapter.lora_b.shape[0] != out_features or adapter.lora_a.shape[1] != in_features:
                raise SourceError(f"adapter '{self.folder}' does not fit {name}: B·A is "
                                  f"{adapter.lora_b.shape[0]}x{adapter.lora_a.shape[1]}, the "
                                  f"base matrix {rows}x{cols}: pass the base model the adapter "
                                  "was trained on")
        self._refs = base.matrices()

    @property
    def adapted(self) -> set[str]:
        return set(self._adapters)

    def identity(self, ref: MatrixRef) -> dict | None:
        base = self._base.identity(ref)
        if base is None or ref.name not in self._adapters:
            return base
        return {**base, "adapter": dict(self._files)}

    def load(self, ref: MatrixRef) -> np.ndarray:
        matrix = self._base.load(ref)
        adapter = self._adapters.get(ref.name)
        if adapter is None:
            return matrix
        return effective_matrix(torch.from_numpy(np.ascontiguousarray(matrix)), adapter.lora_a,
                                adapter.lora_b, adapter.scaling, adapter.magnitude,
                                self.fan_in_fan_out).numpy()

    def close(self) -> None:
        self._base.close()


def _identity_if_file(path: Path | None) -> dict | None:
    return file_identity(path) if path is not None and path.is_file() else None
