"""Tiny offline tokenizers and models for the training tests: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

#: Special tokens of the byte-level test tokenizer; ids 0..3, then the 256 bytes.
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def byte_tokenizer(pad_is_eos: bool = False):
    """A byte-level BPE tokenizer without merges: one token per byte, 260 ids.

    ``pad_is_eos`` makes the pad token the EOS token, as in many instruct models (SmolLM2), the
    case where a careless collator masks the EOS labels.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(SPECIALS)}
    for char in sorted(alphabet):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>",
                                        pad_token="<eos>" if pad_is_eos else "<pad>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tokenizer


def tiny_causal_lm(layers: int = 2, seed: int = 0, vocab_size: int = 260,
                   hidden: int = 32) -> torch.nn.Module:
    """An in-memory Llama (hidden 32, GQA; MLP twice as wide) sized for the byte tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab_size,
                         max_position_embeddings=512, pad_token_id=0, eos_token_id=1,
                         bos_token_id=2)
    return LlamaForCausalLM(config)


def tiny_bert(num_labels: int, layers: int = 2, seed: int = 0,
              vocab_size: int = 260) -> torch.nn.Module:
    """An in-memory BERT sequence classifier (hidden 32) sized for the byte tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                        num_attention_heads=4, vocab_size=vocab_size, num_labels=num_labels,
                        max_position_embeddings=512, pad_token_id=0)
    return BertForSequenceClassification(config)


def save_causal_lm(folder: Path, layers: int = 2) -> Path:
    """A tiny Llama saved as a checkpoint directory with its byte-level tokenizer (pad = eos)."""
    tiny_causal_lm(layers=layers).save_pretrained(folder)
    byte_tokenizer(pad_is_eos=True).save_pretrained(folder)
    return folder


def write_code_files(folder: Path, files: int = 12) -> Path:
    """Small Python files, one function each: enough for a split by file."""
    for i in range(files):
        (folder / f"mod_{i}.py").write_text(f"def add_{i}(x):\n    return x + {i}\n")
    return folder
