"""Synthetic Llama-2-7B-shaped checkpoints for the analyzer's scale benchmarks.

Student-t weights (3 degrees of freedom: heavy tails, as trained weights have), scaled to a
typical init std, stored as bf16 safetensors one shard per block, with the index a hub
checkpoint has. Every matrix has its own seed, so a block's weights are the same whichever
blocks are written and a checkpoint can be rebuilt exactly. Shards are generated in separate
processes (generation, not the analyzer, is the slow part: ~2 s per 11008×4096 matrix).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

LLAMA_2_7B = {"hidden": 4096, "intermediate": 11008, "vocab": 32000, "layers": 32}
_DEGREES_OF_FREEDOM = 3
_SCALE = 0.02


def block_shapes(hidden: int, intermediate: int) -> dict[str, tuple[int, int]]:
    """The seven matrices of one Llama block, as (out, in) like nn.Linear's weight."""
    return {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
            "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
            "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
            "mlp.down_proj": (hidden, intermediate)}


def student_t(shape: tuple[int, int], seed: list[int]) -> torch.Tensor:
    """bf16 Student-t weights: z / sqrt(χ²_ν / ν), χ²_ν = 2·Gamma(ν/2), in float32 (2× faster
    than numpy's float64 standard_t)."""
    rng = np.random.default_rng(seed)
    half_nu = _DEGREES_OF_FREEDOM / 2
    values = rng.standard_normal(shape, dtype=np.float32)
    values /= np.sqrt(rng.standard_gamma(half_nu, shape, dtype=np.float32) / half_nu)
    values *= _SCALE
    return torch.from_numpy(values).bfloat16()


def _shard_tensors(shard: str, shape: dict) -> dict[str, tuple[int, int]]:
    if shard == "embed":
        return {"model.embed_tokens.weight": (shape["vocab"], shape["hidden"]),
                "lm_head.weight": (shape["vocab"], shape["hidden"])}
    block = int(shard.removeprefix("block-"))
    return {f"model.layers.{block}.{name}.weight": matrix_shape
            for name, matrix_shape in block_shapes(shape["hidden"],
                                                   shape["intermediate"]).items()}


def _write_shard(folder: Path, shard: str, shape: dict) -> dict[str, str]:
    from safetensors.torch import save_file

    file_name = f"model-{shard}.safetensors"
    seed = 0 if shard == "embed" else int(shard.removeprefix("block-")) + 1
    tensors = {name: student_t(matrix_shape, [seed, index])
               for index, (name, matrix_shape) in enumerate(_shard_tensors(shard, shape).items())}
    partial = folder / f"{file_name}.partial"  # renamed when whole: a killed write leaves no shard
    save_file(tensors, partial)
    partial.replace(folder / file_name)
    return {name: file_name for name in tensors}


def write_llama(folder: Path, blocks: int, embeddings: bool = False,
                shape: dict | None = None, processes: int | None = None) -> Path:
    """Write ``blocks`` Llama-2-7B-shaped blocks (and the embedding and LM head when
    ``embeddings``) into ``folder``; shards already there are kept (a rebuilt shard would be
    identical), so an interrupted write resumes."""
    shape = shape or LLAMA_2_7B
    folder.mkdir(parents=True, exist_ok=True)
    shards = [f"block-{block}" for block in range(blocks)] + (["embed"] if embeddings else [])
    weight_map = {}
    missing = []
    for shard in shards:
        if (folder / f"model-{shard}.safetensors").is_file():
            weight_map.update({name: f"model-{shard}.safetensors"
                               for name in _shard_tensors(shard, shape)})
        else:
            missing.append(shard)
    workers = processes or min(len(missing), os.cpu_count() or 1) or 1
    # Spawned, not forked: a fork of a process whose torch, tokenizers or Ray threads hold locks
    # can hang in the child (the GPU check writes its 7B shape after training runs).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for written in pool.map(_write_shard, [folder] * len(missing), missing,
                                [shape] * len(missing)):
            weight_map.update(written)
    index = {"metadata": {"synthetic": f"Student-t(ν={_DEGREES_OF_FREEDOM}) × {_SCALE}, bf16"},
             "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return folder
