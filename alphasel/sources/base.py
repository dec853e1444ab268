"""What every weight source offers: the list of weight matrices, then one matrix at a time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alphasel.layout import block_of, kind_of, model_order


@dataclass(frozen=True)
class MatrixRef:
    """A weight matrix known by name and shape, not yet read."""

    name: str
    """Full module name, without a trailing ``.weight``."""
    shape: tuple[int, int]
    """(rows, cols) as stored in the checkpoint."""
    key: str
    """How the source finds it again (tensor name in its file)."""


def matrix_name(tensor_name: str) -> str | None:
    """The module name of a weight tensor, or None for tensors that are not module weights
    (biases, norms' scales are 1-D and filtered by shape; buffers and LoRA pieces by name)."""
    if not tensor_name.endswith(".weight"):
        return None
    return tensor_name.removesuffix(".weight")


def file_identity(path: Path) -> dict:
    """What says a file is unchanged: its resolved path (a hub cache's symlink leads to its
    blob), size and modification time in nanoseconds. Taken before the file is read, so a file
    rewritten during an analysis can only make an entry that is never found again."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def reading_order(refs: list[MatrixRef]) -> list[MatrixRef]:
    """``refs`` in model order (:func:`alphasel.layout.model_order`)."""
    return sorted(refs, key=lambda ref: model_order(ref.name, block_of(ref.name),
                                                    kind_of(ref.name)))


class WeightSource(ABC):
    """A lazily read checkpoint: ``matrices()`` lists, ``load(ref)`` reads one matrix."""

    model_id: str
    """What the user would call the model (hub id, path)."""
    revision: str | None = None
    """Hub revision (commit) when known."""
    location: str = ""
    """Where the weights were read from."""
    format: str = ""
    """safetensors, pytorch-bin, gguf or module."""
    _refs: list[MatrixRef]
    """Set by each source's constructor, in reading order (see :func:`reading_order`)."""

    def matrices(self) -> list[MatrixRef]:
        """Every 2-D floating-point weight, in reading order."""
        return list(self._refs)

    @abstractmethod
    def load(self, ref: MatrixRef) -> np.ndarray:
        """The matrix as float32 or float64 (half precision is upcast here, per matrix)."""

    def load_stored(self, ref: MatrixRef) -> np.ndarray | torch.Tensor:
        """The matrix in the precision it is stored in where that is half precision (a bf16
        tensor, an fp16 array), so the GPU path moves half the bytes and upcasts on the device;
        otherwise (the default) what :meth:`load` returns."""
        return self.load(ref)

    def identity(self, ref: MatrixRef) -> dict | None:
        """Everything the values ``load(ref)`` returns depend on, as JSON-ready data (file
        identity, tensor offset, dtype, shape), for the result cache; None when the source has
        no such identity (a live module's weights can change in place), which is never cached.
        """
        return None

    def close(self) -> None:
        """Release files; the default has nothing to release."""
        return None

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
