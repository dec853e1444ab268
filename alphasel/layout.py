"""Model layout: which transformer block a weight matrix belongs to, what kind it is, and the
vocabulary of kinds every other module uses (:data:`KINDS`, :data:`KIND_GROUPS`,
:data:`BLOCK_KINDS`, :data:`CANDIDATE_KINDS`) and the model order they sort by.

Works on full module names (``model.layers.3.self_attn.q_proj``) for Llama/Mistral/Qwen2-style,
BERT-style, GPT-2-style (Conv1D, fused ``c_attn``), Phi-style and GGUF names, with a generic
fallback: the first integer path component after a known container is the block, and names
that match no rule are kind ``other``.
"""

from __future__ import annotations

import re

#: Module kinds, in the order tables and figures show them.
KINDS = ("q", "k", "v", "o", "qkv", "gate", "up", "down", "embed", "head", "other")
#: Named groups of kinds (``--kinds attn``, ``--kinds mlp``).
KIND_GROUPS = {"attn": ("q", "k", "v", "o", "qkv"), "mlp": ("gate", "up", "down")}
#: Kinds that live inside transformer blocks, in :data:`KINDS` order: the projections.
BLOCK_KINDS = KIND_GROUPS["attn"] + KIND_GROUPS["mlp"]
#: Kinds that may be chosen (for an adapter, or to train): the block kinds. Never embed or head
#: (not the projections LoRA targets here, and vocabulary-sized), never other: a module the
#: layout could not name has unknown structure, so its place in a block and its meaning are
#: guesses.
CANDIDATE_KINDS = BLOCK_KINDS

# A block index is an integer path component right after a container of blocks.
_BLOCK = re.compile(
    r"(?:^|\.)(?:layers|layer|h|blocks|block|blk|decoder\.layers|encoder\.layers|"
    r"transformer\.h|gpt_neox\.layers)\.(\d+)(?:\.|$)"
)
# Fallback for unknown families: any integer path component.
_ANY_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")

# (pattern searched in the part of the name after the block index, kind). Order matters:
# BERT's `attention.output.dense` must be tried before its MLP `output.dense`, and GPT-2's
# `attn.c_proj` before `mlp.c_proj`.
_KIND_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), kind)
    for p, kind in [
        (r"(?:^|\.)(?:c_attn|qkv_proj|query_key_value|Wqkv|qkv|attn_qkv|in_proj)$", "qkv"),
        (r"(?:^|\.)(?:q_proj|query|q_lin|wq|attn_q|q)$", "q"),
        (r"(?:^|\.)(?:k_proj|key|k_lin|wk|attn_k|k)$", "k"),
        (r"(?:^|\.)(?:v_proj|value|v_lin|wv|attn_v|v)$", "v"),
        (r"(?:attention\.output\.dense|attention\.dense|self_attn\.dense|attn\.c_proj|"
         r"attn\.out_proj|o_proj|out_proj|out_lin|attn_output|self_attn\.wo|attention\.wo)$",
         "o"),
        (r"(?:^|\.)(?:gate_proj|w1|ffn_gate)$", "gate"),
        # Phi-3's fused gate+up projection feeds the same place as up_proj.
        (r"(?:intermediate\.dense|c_fc|fc1|up_proj|gate_up_proj|dense_h_to_4h|w3|ffn_up|"
         r"lin1)$", "up"),
        (r"(?:output\.dense|mlp\.c_proj|fc2|down_proj|dense_4h_to_h|w2|ffn_down|lin2)$", "down"),
    ]
]
_EMBED = re.compile(
    r"(?:embed_tokens|embed_positions|wte|wpe|word_embeddings|position_embeddings|"
    r"token_type_embeddings|embed_in|token_embd|tok_embeddings|embeddings?)$"
)
_HEAD = re.compile(r"(?:^|\.)(?:lm_head|embed_out|output|classifier|score|head)$")


def block_of(name: str) -> int | None:
    """The transformer block index of a module name, or None outside blocks.

    >>> block_of("model.layers.11.mlp.up_proj")
    11
    >>> block_of("model.embed_tokens") is None
    True
    """
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1))
    if _EMBED.search(name) or _HEAD.search(name):
        return None
    match = _ANY_INDEX.search(name)
    return int(match.group(1)) if match else None


def kind_of(name: str) -> str:
    """The module kind: q, k, v, o, gate, up, down, qkv, embed, head or other.

    >>> kind_of("encoder.layer.0.attention.output.dense"), kind_of("encoder.layer.0.output.dense")
    ('o', 'down')
    """
    name = name.removesuffix(".weight")
    match = _BLOCK.search(name)
    if match is None and _EMBED.search(name):
        return "embed"
    if match is None and _HEAD.search(name):
        return "head"
    inner = name[match.end():] if match else name
    for pattern, kind in _KIND_RULES:
        if pattern.search(inner):
            return kind
    return "other"


def model_order(name: str, block: int | None, kind: str) -> tuple:
    """Sort key of model order: embeddings first, then the blocks by depth (each block's kinds
    in :data:`KINDS` order, unknown kinds last), then everything else; ties by name."""
    if block is None:
        group, depth = (0 if kind == "embed" else 2), 0
    else:
        group, depth = 1, block
    rank = KINDS.index(kind) if kind in KINDS else len(KINDS)
    return group, depth, rank, name
