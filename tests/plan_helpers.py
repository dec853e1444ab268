"""Tiny in-memory Llama models and hand-written alpha tables for the planner tests."""

from __future__ import annotations

import re

import pandas as pd
import torch
from transformers import LlamaConfig, LlamaForCausalLM

SUFFIX_KINDS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
                "up_proj": "up", "down_proj": "down", "embed_tokens": "embed", "lm_head": "head"}
CANDIDATE_ORDER = ["q", "k", "v", "o", "gate", "up", "down"]

#: Hand-written alphas of the 4-block model: block → alpha per kind in CANDIDATE_ORDER.
#: Block means: 0 → 2.97, 1 → 5.07, 2 → 2.30, 3 → 4.56. Highest matrices: 3.v 7.0, 1.k 6.5,
#: 1.gate 5.5; lowest: 2.q 2.0, 2.v 2.1. Embeddings and head get the highest of all (never
#: candidates).
ALPHAS = {
    0: [3.0, 3.1, 2.5, 2.8, 3.3, 3.2, 2.9],
    1: [5.0, 6.5, 4.0, 4.5, 5.5, 5.2, 4.8],
    2: [2.0, 2.2, 2.1, 2.4, 2.3, 2.6, 2.5],
    3: [4.0, 4.2, 7.0, 3.9, 4.1, 4.3, 4.4],
}


def tiny_llama(layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    return LlamaForCausalLM(config)


def alpha_table(model: torch.nn.Module, alphas: dict[int, list[float]] | None = None,
                default: float = 3.0) -> pd.DataFrame:
    """One row per Linear/Embedding weight of ``model``, with alphas from ``alphas``."""
    alphas = ALPHAS if alphas is None else alphas
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            continue
        kind = SUFFIX_KINDS.get(name.rsplit(".", 1)[-1], "other")
        found = re.search(r"\.layers\.(\d+)\.", name)
        block = int(found.group(1)) if found else None
        if kind == "embed":
            alpha = 9.0
        elif kind == "head":
            alpha = 10.0
        elif block in alphas:
            alpha = alphas[block][CANDIDATE_ORDER.index(kind)]
        else:
            alpha = default
        out_rows, in_cols = module.weight.shape
        rows.append({"name": name, "block": block, "kind": kind, "rows": out_rows,
                     "cols": in_cols, "alpha": alpha, "status": "ok"})
    table = pd.DataFrame(rows)
    table["block"] = table["block"].astype("Int64")
    table.attrs["alphasel"] = {"model_id": "tiny-llama", "estimator": "ks"}
    return table


def name(block: int, kind: str) -> str:
    part = "self_attn" if kind in ("q", "k", "v", "o") else "mlp"
    return f"model.layers.{block}.{part}.{kind}_proj"
