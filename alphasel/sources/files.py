"""Checkpoint files on disk: safetensors (single or sharded) and pytorch_model*.bin shards.

safetensors are read with plain positioned reads of one tensor's bytes, not a memory map: a
mapped file's touched pages count toward the process's resident memory until unmapped, which
would make peak RSS grow with the checkpoint instead of with its largest matrix.
"""

from __future__ import annotations

import json
import re
import struct
import threading
from pathlib import Path

import numpy as np
import torch

from alphasel.errors import SourceError
from alphasel.sources.base import (
    MatrixRef,
    WeightSource,
    file_identity,
    matrix_name,
    reading_order,
)

# safetensors dtype → (numpy dtype to read the bytes as, torch dtype they really are)
_SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, torch.dtype | None]] = {
    "F64": (np.dtype("<f8"), None),
    "F32": (np.dtype("<f4"), None),
    "F16": (np.dtype("<f2"), None),
    # numpy has no bfloat16: read the raw 16-bit words and let torch reinterpret them.
    "BF16": (np.dtype("<u2"), torch.bfloat16),
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def _corrupt(path: Path, what: str) -> SourceError:
    return SourceError(f"'{path}' is not a valid safetensors file ({what}): re-download or "
                       "re-save it")


class SafetensorsSource(WeightSource):
    """One or more .safetensors files (a sharded checkpoint is the union of its shards)."""

    format = "safetensors"

    def __init__(self, files: list[Path], model_id: str, revision: str | None = None) -> None:
        self.model_id = model_id
        self.revision = revision
        self.location = str(files[0].parent if len(files) > 1 else files[0])
        self._entries: dict[str, tuple[Path, dict, int]] = {}
        self._files: dict[Path, dict] = {}
        refs = []
        for path in files:
            self._files[path] = file_identity(path)
            header, data_start = self._read_header(path)
            for tensor_name, entry in header.items():
                name = matrix_name(tensor_name)
                if name is None or entry["dtype"] not in _SAFETENSORS_DTYPES:
                    continue
                if len(entry["shape"]) != 2:
                    continue
                self._entries[tensor_name] = (path, entry, data_start)
                refs.append(MatrixRef(name, tuple(entry["shape"]), tensor_name))
        self._refs = reading_order(refs)

    @staticmethod
    def _read_header(path: Path) -> tuple[dict, int]:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, "shorter than its 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(size - 8, _MAX_HEADER_BYTES):
                raise _corrupt(path, f"header length {header_len} exceeds the file")
            try:
                header = json.loads(handle.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise _corrupt(path, f"unreadable header: {err}") from err
        if not isinstance(header, dict):
            raise _corrupt(path, "header is not a JSON object")
        header.pop("__metadata__", None)
        data_start = 8 + header_len
        # Check every tensor's byte range up front so a truncated file fails before any output.
        for tensor_name, entry in header.items():
            try:
                begin, end = entry["data_offsets"]
                shape, dtype = entry["shape"], entry["dtype"]
            except (KeyError, TypeError, ValueError) as err:
                raise _corrupt(path, f"malformed entry for '{tensor_name}'") from err
            if data_start + end > size or begin > end:
                raise _corrupt(path, f"truncated: tensor '{tensor_name}' ends at byte "
                                     f"{data_start + end} of {size}")
            if dtype in _SAFETENSORS_DTYPES:
                expected = int(np.prod(shape)) * _SAFETENSORS_DTYPES[dtype][0].itemsize
                if end - begin != expected:
                    raise _corrupt(path, f"tensor '{tensor_name}' has {end - begin} bytes for "
                                         f"shape {shape} {dtype}")
        return header, data_start

    def identity(self, ref: MatrixRef) -> dict:
        path, entry, data_start = self._entries[ref.key]
        return {"file": self._files[path], "tensor": ref.key,
                "offset": data_start + entry["data_offsets"][0], "dtype": entry["dtype"],
                "shape": list(entry["shape"])}

    def load(self, ref: MatrixRef) -> np.ndarray:
        stored = self.load_stored(ref)
        if isinstance(stored, torch.Tensor):  # bf16
            return stored.float().numpy()
        return stored.astype(np.float32) if stored.dtype == np.float16 else stored

    def load_stored(self, ref: MatrixRef) -> np.ndarray | torch.Tensor:
        path, entry, data_start = self._entries[ref.key]
        begin, end = entry["data_offsets"]
        raw_dtype, real_dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        # np.empty, not bytearray: no zero-fill pass over memory the read overwrites anyway.
        buffer = np.empty(end - begin, dtype=np.uint8)
        with open(path, "rb", buffering=0) as handle:
            handle.seek(data_start + begin)
            if handle.readinto(memoryview(buffer)) != len(buffer):
                raise _corrupt(path, f"could not read tensor '{ref.key}'")
        array = buffer.view(raw_dtype).reshape(ref.shape)
        if real_dtype is not None:
            return torch.from_numpy(array.view(np.int16)).view(real_dtype)
        return array


class TorchBinSource(WeightSource):
    """pytorch_model*.bin shards, loaded weights-only and memory-mapped, one shard at a time."""

    format = "pytorch-bin"

    def __init__(self, files: list[Path], model_id: str, revision: str | None = None) -> None:
        self.model_id = model_id
        self.revision = revision
        self.location = str(files[0].parent)
        self._shard_of: dict[str, Path] = {}
        self._dtype_of: dict[str, str] = {}
        self._files: dict[Path, dict] = {}
        self._open_path: Path | None = None
        self._open_state: dict | None = None
        self._switching = threading.Lock()
        refs = []
        for path in files:
            self._files[path] = file_identity(path)
            state = self._load_shard(path)
            for tensor_name, tensor in state.items():
                name = matrix_name(tensor_name)
                if name is None or tensor.ndim != 2 or not tensor.is_floating_point():
                    continue
                self._shard_of[tensor_name] = path
                self._dtype_of[tensor_name] = str(tensor.dtype)
                refs.append(MatrixRef(name, tuple(tensor.shape), tensor_name))
            del state
        self._refs = reading_order(refs)

    @staticmethod
    def _load_shard(path: Path) -> dict:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # torch raises many types for corrupt pickles/zips
            raise SourceError(f"cannot read '{path}' as a PyTorch checkpoint ({err}): re-download "
                              "it, or convert it to safetensors") from err
        if not isinstance(state, dict):
            raise SourceError(f"'{path}' holds a {type(state).__name__}, not a state dict: "
                              "save the model's state_dict() instead")
        return state

    def identity(self, ref: MatrixRef) -> dict:
        # A tensor's place inside the zip archive is not exposed; the file's identity with the
        # tensor's name says as much, since rewriting the archive changes its size or mtime.
        return {"file": self._files[self._shard_of[ref.key]], "tensor": ref.key,
                "dtype": self._dtype_of[ref.key], "shape": list(ref.shape)}

    def _mapped(self, ref: MatrixRef) -> torch.Tensor:
        """The memory-mapped tensor (it keeps its shard's mapping alive while referenced).
        Under a lock: two workers straddling a shard boundary would otherwise swap the open
        shard under each other's lookup."""
        path = self._shard_of[ref.key]
        with self._switching:
            if path != self._open_path:
                self._open_state = None  # drop the previous shard's mapping before the next
                self._open_state = self._load_shard(path)
                self._open_path = path
            return self._open_state[ref.key].detach()

    def load(self, ref: MatrixRef) -> np.ndarray:
        tensor = self._mapped(ref)
        return tensor.to(torch.float32 if tensor.element_size() < 4 else tensor.dtype
                         ).clone().numpy()

    def load_stored(self, ref: MatrixRef) -> torch.Tensor:
        return self._mapped(ref).clone()

    def close(self) -> None:
        self._open_state = None
        self._open_path = None


def directory_weights(folder: Path) -> tuple[str, list[Path]]:
    """The weight files of a checkpoint directory: (format, files).

    Prefers safetensors (the index's shards when there is an index), then PyTorch .bin shards,
    then a single GGUF file.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise SourceError(f"'{index}' is not a valid safetensors index ({err}): re-download "
                              "it") from err
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise SourceError(f"shard(s) listed in '{index}' are missing: {', '.join(missing)}; "
                              "download every shard of the checkpoint")
        return "safetensors", files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return "safetensors", files
    bins = sorted(path for path in folder.glob("pytorch_model*.bin"))
    if bins:
        return "pytorch-bin", bins
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf", ggufs
    if len(ggufs) > 1:
        raise SourceError(f"'{folder}' holds {len(ggufs)} GGUF files: pass one of them by path")
    raise SourceError(f"no weights in '{folder}': expected *.safetensors (optionally with "
                      "model.safetensors.index.json), pytorch_model*.bin or one .gguf file")


def open_file_source(path: Path, model_id: str | None = None,
                     revision: str | None = None) -> WeightSource:
    """A source for a local checkpoint directory or a single weight file."""
    model_id = model_id or str(path)
    if path.is_dir():
        kind, files = directory_weights(path)
    elif path.suffix == ".safetensors":
        kind, files = "safetensors", [path]
    elif path.suffix == ".gguf":
        kind, files = "gguf", [path]
    elif path.suffix in (".bin", ".pt", ".pth"):
        kind, files = "pytorch-bin", [path]
    else:
        raise SourceError(f"cannot read '{path}': expected a checkpoint directory or a "
                          ".safetensors, .gguf or pytorch .bin file")
    if kind == "safetensors":
        return SafetensorsSource(files, model_id, revision)
    if kind == "pytorch-bin":
        return TorchBinSource(files, model_id, revision)
    from alphasel.sources.gguf_file import GGUFSource

    return GGUFSource(files[0], model_id)


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def looks_like_hub_id(text: str) -> bool:
    """``name`` or ``org/name`` without a weight-file suffix; anything else is a path."""
    return bool(_HUB_ID.match(text)) and not text.endswith(WEIGHT_SUFFIXES)
