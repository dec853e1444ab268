import pytest

from alphasel.layout import block_of, kind_of

CASES = [
    # Llama / Mistral / Qwen2
    ("model.layers.3.self_attn.q_proj", 3, "q"),
    ("model.layers.3.self_attn.k_proj", 3, "k"),
    ("model.layers.3.self_attn.v_proj", 3, "v"),
    ("model.layers.3.self_attn.o_proj", 3, "o"),
    ("model.layers.11.mlp.gate_proj", 11, "gate"),
    ("model.layers.11.mlp.up_proj", 11, "up"),
    ("model.layers.11.mlp.down_proj", 11, "down"),
    ("model.embed_tokens", None, "embed"),
    ("lm_head", None, "head"),
    # BERT
    ("encoder.layer.2.attention.self.query", 2, "q"),
    ("bert.encoder.layer.2.attention.self.key", 2, "k"),
    ("encoder.layer.2.attention.self.value", 2, "v"),
    ("encoder.layer.2.attention.output.dense", 2, "o"),
    ("encoder.layer.2.intermediate.dense", 2, "up"),
    ("encoder.layer.2.output.dense", 2, "down"),
    ("embeddings.word_embeddings", None, "embed"),
    ("embeddings.position_embeddings", None, "embed"),
    ("pooler.dense", None, "other"),
    # GPT-2 (Conv1D, fused c_attn)
    ("transformer.h.5.attn.c_attn", 5, "qkv"),
    ("transformer.h.5.attn.c_proj", 5, "o"),
    ("transformer.h.5.mlp.c_fc", 5, "up"),
    ("transformer.h.5.mlp.c_proj", 5, "down"),
    ("transformer.wte", None, "embed"),
    # Phi / Phi-3
    ("model.layers.0.self_attn.dense", 0, "o"),
    ("model.layers.0.mlp.fc1", 0, "up"),
    ("model.layers.0.mlp.fc2", 0, "down"),
    ("model.layers.1.self_attn.qkv_proj", 1, "qkv"),
    ("model.layers.1.mlp.gate_up_proj", 1, "up"),
    # GGUF names kept as they are
    ("blk.7.attn_q", 7, "q"),
    ("blk.7.ffn_down", 7, "down"),
    # generic fallback
    ("encoder.stages.4.something.weird", 4, "other"),
    ("model.norm", None, "other"),
]


@pytest.mark.parametrize(("name", "block", "kind"), CASES)
def test_block_and_kind(name, block, kind):
    assert block_of(name) == block
    assert kind_of(name) == kind


def test_layer_one_is_not_layer_eleven():
    assert block_of("model.layers.1.mlp.up_proj") == 1
    assert block_of("model.layers.11.mlp.up_proj") == 11
