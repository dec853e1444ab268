"""Builders every test shares: one tiny in-memory model per architecture, the byte-level
tokenizer, tiny checkpoints and data written to tmp dirs, hand-written alpha tables. Nothing is
downloaded. (Fixtures are in conftest.py.)"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import datasets
import gguf
import numpy as np
import pandas as pd
import torch

from alphasel.training.data import TrainData
from analysis import hub_checkpoint

# ---- tokenizer --------------------------------------------------------------------------------

#: What a model needs to take the byte tokenizer's ids (SPECIALS, then the 256 bytes).
BYTE_VOCABULARY = dict(vocab_size=260, max_position_embeddings=512, pad_token_id=0,
                       eos_token_id=1, bos_token_id=2)


def byte_tokenizer(pad_is_eos: bool = False):
    """The GPU check's byte-level tokenizer (one token per byte, 260 ids) with a chat template.

    ``pad_is_eos`` makes the pad token the EOS token, as in many instruct models (SmolLM2), the
    case where a careless collator masks the EOS labels.
    """
    tokenizer = hub_checkpoint.byte_tokenizer(pad_is_eos)
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tokenizer


# ---- models -----------------------------------------------------------------------------------

def tiny_llama(layers: int = 2, seed: int = 0, hidden: int = 32, **config) -> torch.nn.Module:
    """An in-memory Llama causal LM (hidden 32, 4 heads and 2 KV heads, MLP twice as wide),
    sized for :func:`byte_tokenizer` unless ``config`` says otherwise (e.g. ``vocab_size=100,
    pad_token_id=None`` for a model no tokenizer feeds)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, **{**BYTE_VOCABULARY, **config}))


#: A Llama for analysis-only tests: vocabulary 100, no pad token.
ANALYSIS_LLAMA = dict(vocab_size=100, pad_token_id=None)


def tiny_bert(num_labels: int, layers: int = 2, seed: int = 0,
              vocab_size: int = 260) -> torch.nn.Module:
    """An in-memory BERT sequence classifier (hidden 32) sized for the byte tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                        num_attention_heads=4, vocab_size=vocab_size, num_labels=num_labels,
                        max_position_embeddings=512, pad_token_id=0)
    return BertForSequenceClassification(config)


def tiny_gpt2(head: bool = True, vocab_size: int = 100, positions: int = 64) -> torch.nn.Module:
    """An in-memory GPT-2 (hidden 32, 2 blocks; Conv1D weights stored in × out, fused
    c_attn): the LM, or the bare model without its head."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=vocab_size,
                        n_positions=positions)
    return (GPT2LMHeadModel if head else GPT2Model)(config)


def trained_adapters(model: torch.nn.Module, config) -> torch.nn.Module:
    """``model`` with PEFT adapters of ``config`` moved away from their zero start (B and
    DoRA's magnitude perturbed, seeded), as after training."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT zeroes B at init (also for "gaussian")
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
            elif "lora_magnitude_vector" in name:
                parameter.mul_(1 + 0.2 * torch.rand(parameter.shape, generator=generator))
    return peft_model


#: LoRA variants by name: the LoraConfig fields that make them.
LORA_VARIANTS = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}


def adapted_model(arch: str, variant: str = "lora", trained: bool = True):
    """(a tiny ``arch`` ("llama" or "gpt2") with ``variant`` adapters on three kinds of
    projection, in eval mode; its LoRA layers by module name). ``trained``: the adapters moved
    from their zero start (see :func:`trained_adapters`)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    if arch == "llama":
        model, config = tiny_llama(), LoraConfig(r=4, lora_alpha=8,
                                                 target_modules=["q_proj", "v_proj", "down_proj"])
    else:
        model, config = tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, fan_in_fan_out=True,
                                                target_modules=["c_attn", "c_fc", "c_proj"])
    for key, value in LORA_VARIANTS[variant].items():
        setattr(config, key, value)
    peft_model = (trained_adapters(model, config) if trained
                  else get_peft_model(model, config)).eval()
    layers = {module_name: module
              for module_name, module in peft_model.get_base_model().named_modules()
              if isinstance(module, LoraLayer)}
    return peft_model, layers


# ---- files ------------------------------------------------------------------------------------

def save_causal_lm(folder: Path, layers: int = 2, dtype: torch.dtype = torch.float32,
                   model: torch.nn.Module | None = None) -> Path:
    """A tiny Llama (or ``model``) saved as a checkpoint directory with its byte-level tokenizer
    (pad = eos), its weights stored in ``dtype`` as the hub stores bf16/fp16 checkpoints (the
    dtype in config.json)."""
    model = copy.deepcopy(model) if model is not None else tiny_llama(layers=layers)
    model.to(dtype).save_pretrained(folder)  # a copy: the caller's model keeps its dtype
    byte_tokenizer(pad_is_eos=True).save_pretrained(folder)
    return folder


def write_code_files(folder: Path, files: int = 12) -> Path:
    """Small Python files, one function each: enough for a split by file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"mod_{i}.py").write_text(f"def add_{i}(x):\n    return x + {i}\n")
    return folder


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]],
               architecture: str = "llama") -> Path:
    """A GGUF file holding ``tensors`` (name → (float32 array rows×cols, type))."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(2)
    writer.add_token_list(["<s>", "</s>", "hello"])  # an array field the parser must skip
    for name, (array, qtype) in tensors.items():
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, gguf.quants.quantize(array, qtype))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---- training data ----------------------------------------------------------------------------

#: TrainConfig options that keep a test run short.
FAST = dict(batch_size=4, max_new_tokens=4, log_every=1)


def code_data(tokenizer, documents: int = 30, length: int = 40) -> TrainData:
    """Pre-tokenized chunks, as load_data gives text data: one EOS-terminated chunk per doc."""
    texts = [f"def add_{i}(x):\n    return x + {i}\n" * 2 for i in range(documents)]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"][:length - 1]
           + [tokenizer.eos_token_id] for text in texts]
    return TrainData("toy-code", "text", datasets.Dataset.from_dict({"input_ids": ids[:-6]}),
                     datasets.Dataset.from_dict({"input_ids": ids[-6:]}), None, "f-code",
                     "toy code", ["def add_1(x):"], {})


def instruction_data(prompt_words: int = 3) -> TrainData:
    """Sixteen Alpaca-style prompt/completion pairs, twelve to train on."""
    prompts = [f"### Instruction:\nadd {' '.join(['one'] * prompt_words)} {i}\n\n### Response:\n"
               for i in range(16)]
    completions = [f"x + {i}" for i in range(16)]
    split = {"prompt": prompts[:12], "completion": completions[:12]}
    held = {"prompt": prompts[12:], "completion": completions[12:]}
    return TrainData("toy-instruct", "instruction", datasets.Dataset.from_dict(split),
                     datasets.Dataset.from_dict(held), None, "f-instr", "toy instructions",
                     ["add 3"], {})


def topic_data(tokenizer) -> TrainData:
    """Two-class texts ("fine" / "awful"), tokenized for a classifier."""
    texts = [("fine " if i % 2 else "awful ") * 2 + str(i) for i in range(24)]
    encoded = tokenizer(texts, truncation=True, max_length=32)
    full = datasets.Dataset.from_dict({"input_ids": encoded["input_ids"],
                                       "attention_mask": encoded["attention_mask"],
                                       "labels": [i % 2 for i in range(24)]})
    return TrainData("toy-topics", "classification", full.select(range(18)),
                     full.select(range(18, 24)), ["awful", "fine"], "f-cls", "toy topics", [], {})


# ---- alpha tables -----------------------------------------------------------------------------

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


def alpha_table(model: torch.nn.Module, alphas: dict[int, list[float]] | None = None,
                default: float = 3.0) -> pd.DataFrame:
    """One row per Linear/Embedding weight of ``model``, with alphas from ``alphas``."""
    alphas = ALPHAS if alphas is None else alphas
    rows = []
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            continue
        kind = SUFFIX_KINDS.get(module_name.rsplit(".", 1)[-1], "other")
        found = re.search(r"\.layers\.(\d+)\.", module_name)
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
        rows.append({"name": module_name, "block": block, "kind": kind, "rows": out_rows,
                     "cols": in_cols, "alpha": alpha, "status": "ok"})
    table = pd.DataFrame(rows)
    table["block"] = table["block"].astype("Int64")
    table.attrs["alphasel"] = {"model_id": "tiny-llama", "estimator": "ks"}
    return table


def name(block: int, kind: str) -> str:
    """The full module name of a Llama block's ``kind`` projection."""
    part = "self_attn" if kind in ("q", "k", "v", "o") else "mlp"
    return f"model.layers.{block}.{part}.{kind}_proj"
