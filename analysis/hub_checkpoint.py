"""Checkpoints the GPU check trains on, with nothing to download or carry: a seeded,
randomly initialised Llama (SmolLM2-135M's shape, or a smaller one), a byte-level tokenizer,
both saved into a hub cache laid out as huggingface_hub lays it out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: A commit name for the hub-layout checkpoint (any 40 hex digits: it is local).
_COMMIT = "b" * 40
#: Special tokens of the byte-level tokenizer: ids 0..3, then one id per byte.
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
#: SmolLM2-135M's shape, as LlamaConfig's fields (its config.json on the hub).
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "max_position_embeddings": 2048, "tie_word_embeddings": True,
                "rope_theta": 100000.0, "rms_norm_eps": 1e-5}

def byte_tokenizer(pad_is_eos: bool = False) -> Any:
    """A byte-level BPE tokenizer without merges: SPECIALS, then one id per byte (260 ids), so
    any text tokenizes with no trained vocabulary to ship. ``pad_is_eos`` pads with the EOS
    token, as many instruct models (SmolLM2) do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIALS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend,
                                   pad_token="<eos>" if pad_is_eos else "<pad>",
                                   eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")


def random_llama(shape: dict, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised LlamaForCausalLM of ``shape`` (LlamaConfig's fields), seeded, in
    float32 on the CPU (the same weights whatever the device), with byte_tokenizer's ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**shape, pad_token_id=SPECIALS.index("<pad>"),
                                        eos_token_id=SPECIALS.index("<eos>"),
                                        bos_token_id=SPECIALS.index("<bos>")))


def write_hub_checkpoint(cache: Path, hub_id: str, model: torch.nn.Module, tokenizer: Any
                         ) -> Path:
    """``model`` (in its dtype) and ``tokenizer`` under ``cache`` as hub id ``hub_id``:
    models--ORG--NAME/snapshots/<commit>/ and refs/main naming that commit. Returns the
    snapshot folder."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / _COMMIT
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(_COMMIT)
    return snapshot
