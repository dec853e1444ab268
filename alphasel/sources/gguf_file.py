"""GGUF files: tensors dequantized one at a time with the `gguf` package, named as in HF.

The header is parsed here rather than with gguf.GGUFReader: the reader decodes every metadata
value (a Llama tokenizer is ~100k strings, seconds of Python) and memory-maps the file, whose
touched pages then count toward resident memory. Only tensor names, shapes, types and offsets
are needed; each tensor's bytes are read with a positioned read and dequantized, by our own
whole-array code for Q4_0/Q4_1/Q8_0 and by `gguf` for every other type.

llama.cpp stores Llama-family q/k weights with their rows permuted for its rotary layout. A
row permutation leaves singular values unchanged, but W + ΔW does not forgive it: an adapter
trained on the HF model (row order as transformers loads it) must be added to rows in the same
order. So q/k rows are put back in HF order, as transformers' GGUF loader does.
"""

from __future__ import annotations

import functools
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alphasel.errors import SourceError
from alphasel.sources.base import MatrixRef, WeightSource, file_identity, reading_order

# llama.cpp tensor names → HF module names for Llama/Mistral/Qwen2-style models.
_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output": "lm_head"}
_IN_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")

# GGUF metadata value types: fixed sizes (struct format) and the two variable ones.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_DEFAULT_ALIGNMENT = 32


def hf_name(gguf_name: str) -> str:
    """HF module name of a GGUF tensor (``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.
    q_proj``); names outside the mapping keep their GGUF form, which the layout rules know."""
    base = gguf_name.removesuffix(".weight")
    if base in _TOP_LEVEL:
        return _TOP_LEVEL[base]
    match = _BLOCK_TENSOR.match(base)
    if match and match.group(2) in _IN_BLOCK:
        return f"model.layers.{match.group(1)}.{_IN_BLOCK[match.group(2)]}"
    return base


@dataclass(frozen=True)
class GGUFTensor:
    """Where one tensor lies in a GGUF file."""

    name: str
    dims: tuple[int, ...]
    """Dimensions fastest-first, as GGUF stores them."""
    qtype: int
    offset: int
    """Absolute byte offset of the tensor's data."""
    nbytes: int


class _HeaderReader:
    """Sequential little-endian reads over a file, buffered in large chunks."""

    def __init__(self, handle, path: Path) -> None:
        self._handle, self._path = handle, path
        self._buffer, self._start, self.position = b"", 0, 0

    def _ensure(self, size: int) -> None:
        """Make the buffer hold the next ``size`` bytes."""
        if self.position + size > self._start + len(self._buffer):
            self._handle.seek(self.position)
            self._buffer = self._handle.read(max(size, 8 << 20))
            self._start = self.position
            if len(self._buffer) < size:
                raise SourceError(f"'{self._path}' is truncated inside its GGUF header: "
                                  "re-download it")

    def take(self, size: int) -> bytes:
        self._ensure(size)
        offset = self.position - self._start
        self.position += size
        return self._buffer[offset:offset + size]

    def skip_strings(self, count: int) -> None:
        """Skip ``count`` length-prefixed strings (a tokenizer's ~100k tokens and merges)
        without slicing or decoding them: the hot loop of reading a GGUF header."""
        read_length = _U64.unpack_from
        for _ in range(count):
            self._ensure(8)
            self.position += 8 + read_length(self._buffer, self.position - self._start)[0]

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("Q")
        if length > 1 << 30:
            raise SourceError(f"'{self._path}' has a corrupt GGUF header (string of {length} "
                              "bytes): re-download it")
        return self.take(length).decode("utf-8", errors="replace")

    def value(self, value_type: int, keep: bool):
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.unpack("I"), self.unpack("Q")
            if item_type in _SCALARS and not keep:  # skip fixed-size arrays in one step
                self.take(count * struct.calcsize(_SCALARS[item_type]))
                return None
            if item_type == _STRING and not keep:
                self.skip_strings(count)
                return None
            items = [self.value(item_type, keep) for _ in range(count)]
            return items if keep else None
        raise SourceError(f"'{self._path}' has a corrupt GGUF header (unknown value type "
                          f"{value_type}): re-download it")


def read_gguf_header(path: Path) -> tuple[dict, list[GGUFTensor]]:
    """The scalar/string metadata (arrays skipped) and the tensor table of a GGUF file."""
    from gguf.constants import GGML_QUANT_SIZES

    size = path.stat().st_size
    with open(path, "rb") as handle:
        reader = _HeaderReader(handle, path)
        if size < 24 or reader.take(4) != b"GGUF":
            raise SourceError(f"'{path}' is not a GGUF file (bad magic bytes): pass a .gguf "
                              "file written by llama.cpp or the gguf package")
        version = reader.unpack("I")
        if version not in (2, 3):
            raise SourceError(f"'{path}' is GGUF version {version}; versions 2 and 3 are "
                              "supported: re-export it with a current llama.cpp")
        tensor_count, kv_count = reader.unpack("Q"), reader.unpack("Q")
        fields = {}
        for _ in range(kv_count):
            key = reader.string()
            value_type = reader.unpack("I")
            value = reader.value(value_type, keep=False)
            if value_type != _ARRAY:
                fields[key] = value
        infos = []
        for _ in range(tensor_count):
            name = reader.string()
            dims = tuple(reader.unpack("Q") for _ in range(reader.unpack("I")))
            infos.append((name, dims, reader.unpack("I"), reader.unpack("Q")))
        alignment = int(fields.get("general.alignment", _DEFAULT_ALIGNMENT))
        data_start = -(-reader.position // alignment) * alignment
    tensors = []
    for name, dims, qtype, offset in infos:
        if qtype not in GGML_QUANT_SIZES:
            raise SourceError(f"GGUF tensor '{name}' in '{path}' has unknown type {qtype}: "
                              "upgrade gguf (`pip install -U gguf`)")
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(dims)) // block_size * type_size
        if data_start + offset + nbytes > size:
            raise SourceError(f"'{path}' is truncated: tensor '{name}' ends past the end of the "
                              "file; re-download it")
        tensors.append(GGUFTensor(name, dims, qtype, data_start + offset, nbytes))
    return fields, tensors


# The common llama.cpp block formats, dequantized with a few whole-array numpy passes instead
# of gguf's per-row-group loop (3.7x faster on a 1536x576 Q4_1 matrix, 4.7 → 1.3 ms). Results
# equal gguf.quants.dequantize bit for bit (tests/test_sources.py): the same float32
# operations in the same order. Block layout: float16 scale d (and min m for Q4_1), then the
# quants; 4-bit quants hold values 0..15 as low nibbles (block elements 0-15) and high
# nibbles (16-31).
def _block_scales(blocks: np.ndarray, count: int) -> np.ndarray:
    return blocks[:, :2 * count].copy().view(np.float16).astype(np.float32)


def _nibbles(quants: np.ndarray) -> np.ndarray:
    values = np.empty((quants.shape[0], 2, quants.shape[1]), dtype=np.uint8)
    np.bitwise_and(quants, 0x0F, out=values[:, 0])
    np.right_shift(quants, 4, out=values[:, 1])
    return values.reshape(quants.shape[0], -1)


def _dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    values = (_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)).astype(np.float32)
    values *= _block_scales(blocks, 1)  # in place: no second matrix-sized allocation
    return values


def _dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    scales = _block_scales(blocks, 2)
    values = _nibbles(blocks[:, 4:]).astype(np.float32)
    values *= scales[:, :1]
    values += scales[:, 1:]
    return values


def _dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    values = blocks[:, 2:].view(np.int8).astype(np.float32)
    values *= _block_scales(blocks, 1)
    return values


@functools.cache
def _fast_dequantizers() -> dict:
    """quant type → (bytes per block, dequantizer); built once, block sizes from gguf."""
    from gguf import GGMLQuantizationType as Q
    from gguf.constants import GGML_QUANT_SIZES

    functions = {Q.Q4_0: _dequantize_q4_0, Q.Q4_1: _dequantize_q4_1, Q.Q8_0: _dequantize_q8_0}
    return {qtype: (GGML_QUANT_SIZES[qtype][1], function)
            for qtype, function in functions.items()}


def dequantize(raw: bytes, qtype: int, shape: tuple[int, int]) -> np.ndarray:
    """A tensor's bytes as a float32 rows × cols matrix."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    packed = np.frombuffer(raw, dtype=np.uint8)
    fast = _fast_dequantizers().get(qtype)
    if fast is not None:
        block_bytes, function = fast
        return function(packed.reshape(-1, block_bytes)).reshape(shape)
    matrix = gguf_dequantize(packed.reshape(shape[0], -1), GGMLQuantizationType(qtype))
    return np.asarray(matrix, dtype=np.float32).reshape(shape)


def _dequantizable(qtype: int) -> bool:
    import gguf
    from gguf import GGMLQuantizationType as Q

    # gguf.quants keeps its dequantizers in a registry; F32/F16 are handled before it.
    return qtype in (Q.F32, Q.F16) or qtype in getattr(gguf.quants, "_type_traits", {})


class GGUFSource(WeightSource):
    """A .gguf file; one dequantized matrix in memory at a time."""

    format = "gguf"

    def __init__(self, path: Path, model_id: str | None = None) -> None:
        from gguf import GGMLQuantizationType

        self.model_id = model_id or str(path)
        self.location = str(path)
        self.revision = None
        self._path = path
        self._file = file_identity(path)
        fields, tensors = read_gguf_header(path)
        self.architecture = fields.get("general.architecture")
        self._heads = (fields.get(f"{self.architecture}.attention.head_count"),
                       fields.get(f"{self.architecture}.attention.head_count_kv"))
        self._tensors: dict[str, GGUFTensor] = {}
        refs = []
        for tensor in tensors:
            if len(tensor.dims) != 2 or not tensor.name.endswith(".weight"):
                continue
            if not _dequantizable(tensor.qtype):
                raise SourceError(
                    f"GGUF tensor '{tensor.name}' in '{path}' uses quant type "
                    f"{GGMLQuantizationType(tensor.qtype).name}, which the installed gguf "
                    "package cannot dequantize: upgrade it (`pip install -U gguf`) or export "
                    "the model as F16, Q8_0 or Q4_x")
            # GGUF lists dimensions fastest-first; rows × cols is the reverse.
            shape = (int(tensor.dims[1]), int(tensor.dims[0]))
            self._tensors[tensor.name] = tensor
            refs.append(MatrixRef(hf_name(tensor.name), shape, tensor.name))
        self._refs = reading_order(refs)
        self._fd = os.open(path, os.O_RDONLY)

    def identity(self, ref: MatrixRef) -> dict:
        # The q/k row order restored in load() follows the header, so the file covers it too.
        tensor = self._tensors[ref.key]
        return {"file": self._file, "tensor": ref.key, "offset": tensor.offset,
                "dtype": int(tensor.qtype), "shape": list(tensor.dims)}

    def load(self, ref: MatrixRef) -> np.ndarray:
        tensor = self._tensors[ref.key]
        raw = os.pread(self._fd, tensor.nbytes, tensor.offset)
        if len(raw) != tensor.nbytes:
            raise SourceError(f"'{self._path}' is truncated at tensor '{ref.key}': re-download it")
        try:
            matrix = dequantize(raw, tensor.qtype, ref.shape)
        except (ValueError, NotImplementedError) as err:
            raise SourceError(f"cannot dequantize GGUF tensor '{ref.key}' ({err}): re-export "
                              "the file or upgrade gguf") from err
        return self._hf_row_order(ref.key, matrix)

    def _hf_row_order(self, key: str, matrix: np.ndarray) -> np.ndarray:
        """Undo llama.cpp's rotary permutation of a Llama q/k weight: its converter regroups
        each head's rows (head, 2, half) → (head, half, 2); this swaps them back."""
        heads, kv_heads = self._heads
        if self.architecture != "llama" or not heads or not (".attn_q." in key
                                                             or ".attn_k." in key):
            return matrix
        groups = int(kv_heads or heads) if ".attn_k." in key else int(heads)
        half = matrix.shape[0] // groups // 2
        return np.ascontiguousarray(
            matrix.reshape(groups, half, 2, matrix.shape[1]).swapaxes(1, 2).reshape(
                matrix.shape))

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
