"""Models and tokenizers for training: what ``alphasel analyze`` takes, loaded by transformers.

    model, tokenizer, info = load_model("smollm2", task="causal")

Hub ids go through huggingface_hub's cache (the same resolution, revision and offline errors as
the analyzer), local checkpoint directories through ``from_pretrained``, GGUF files through
transformers' GGUF loader (dequantized to float32), and the packaged ``smollm2``/``minilm``
through their files. An in-memory module is used as given, with the tokenizer passed beside it.
Nothing here chooses a device: the Trainer (or accelerate/torchrun) places the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alphasel.errors import SourceError, TrainConfigError
from alphasel.sources import ALIASES, packaged_model
from alphasel.sources.files import looks_like_hub_id
from alphasel.sources.hub import resolve_hub_model, snapshot
from alphasel.training.console import library_bars
from alphasel.training.effective import is_packed
from alphasel.training.precision import checkpoint_dtype, module_dtype

#: Tokenizer files fetched beside the weights of a hub model.
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.txt", "vocab.json", "merges.txt",
                   "generation_config.json", "chat_template.jinja", "added_tokens.json"]


@dataclass
class ModelInfo:
    """What was loaded, for the run record."""

    model_id: str
    """The name a user knows the model by (hub id, path, or the module's class)."""
    revision: str | None
    """Hub commit, when the model came from the hub."""
    location: str
    """Where the weights were read from."""
    format: str
    """hub, directory, gguf or module."""


def _locate(model: str, revision: str | None) -> tuple[Path, str | None, ModelInfo]:
    """(folder, gguf file name or None, info) for a path, packaged alias or hub id."""
    path = Path(model).expanduser()
    if not path.exists() and model.lower() in ALIASES:
        path, hub_id = packaged_model(model.lower())
        info = ModelInfo(hub_id, None, str(path), "gguf" if path.suffix == ".gguf" else "directory")
        return (path.parent, path.name, info) if path.suffix == ".gguf" else (path, None, info)
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return path.parent, path.name, ModelInfo(model, None, str(path), "gguf")
        if path.is_dir() and (path / "config.json").is_file():
            return path, None, ModelInfo(model, None, str(path), "directory")
        if path.is_dir():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return path, ggufs[0].name, ModelInfo(model, None, str(ggufs[0]), "gguf")
        raise SourceError(f"cannot train '{model}': training needs a checkpoint directory with "
                          "config.json (and a tokenizer), a .gguf file, a hub id, or one of the "
                          f"packaged models ({', '.join(ALIASES)})")
    if looks_like_hub_id(model):
        folder, commit = resolve_hub_model(model, revision)
        snapshot(model, commit, TOKENIZER_FILES)
        return folder, None, ModelInfo(model, commit, str(folder), "hub")
    raise SourceError(f"'{model}' does not exist: pass a checkpoint directory, a .gguf file, a "
                      f"hub id like org/name, or one of the packaged models ({', '.join(ALIASES)})")


def stored_dtype(model: str | Path | torch.nn.Module, revision: str | None = None
                 ) -> torch.dtype | None:
    """The dtype ``model``'s weights are stored in (its config.json's; an in-memory module's
    parameters'), when known."""
    if isinstance(model, torch.nn.Module):
        return module_dtype(model)
    folder, gguf_file, _ = _locate(str(model), revision)
    return checkpoint_dtype(folder, gguf_file)


def check_4bit_supported(device: torch.device | str | None = None) -> None:
    """Raise unless bitsandbytes can quantize to 4 bits on ``device`` (default: the current
    CUDA device, else the CPU backend). Under torchrun pass the rank's own device: a probe on
    plain ``cuda`` before the rank's device is set opens a context on every rank's GPU 0."""
    try:
        import bitsandbytes.functional as bnb_functional
    except ImportError as err:
        raise TrainConfigError("--quantize 4bit needs bitsandbytes: `pip install "
                               "'alphasel[quant]'` (or bitsandbytes), or drop --quantize") from err
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        bnb_functional.quantize_4bit(torch.ones(64, 64, device=device), quant_type="nf4")
    except Exception as err:  # bitsandbytes raises RuntimeError/NotImplementedError by backend
        raise TrainConfigError(f"--quantize 4bit cannot run on {device} with the installed "
                               f"bitsandbytes ({err}): use a CUDA machine, a bitsandbytes with "
                               "CPU support (≥ 0.46), or drop --quantize") from err


def _quantization_config() -> Any:
    from transformers import BitsAndBytesConfig

    check_4bit_supported()  # the current device: the rank's, once the process group has set it
    if torch.cuda.is_available():
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        # bf16 matmuls are emulated (slow) on CPUs without AVX512-BF16/AMX; float32 is exact.
        compute = torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)


def load_tokenizer(model: str, *, revision: str | None = None) -> Any:
    """The tokenizer that belongs to a model given by path, alias or hub id."""
    folder, gguf_file, _ = _locate(model, revision)
    return _tokenizer(folder, gguf_file, model)


def _tokenizer(folder: Path, gguf_file: str | None, model: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    except (OSError, ValueError) as err:
        raise SourceError(f"cannot load a tokenizer for '{model}' from '{folder}' ({err}): "
                          "the checkpoint needs its tokenizer files") from err
    return _pad_with_eos(tokenizer)


def _pad_with_eos(tokenizer: Any) -> Any:
    """A tokenizer without a pad token pads with EOS: padding is masked out of attention and
    labels by the collators, which still learn the real EOS (labels come from the ids)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model: str | Path | torch.nn.Module, *, task: str = "causal",
               revision: str | None = None, tokenizer: Any = None,
               labels: list[str] | None = None, quantize: str | None = None,
               dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, Any, ModelInfo]:
    """(model, tokenizer, info) ready to train.

    ``task`` ``causal`` loads a causal LM, ``classification`` a sequence classifier with a new
    head over ``labels``, ``regression`` one with a new one-output head trained with MSE. An
    in-memory module needs ``tokenizer``; it is used as given (its head must already fit the
    labels). ``dtype``: the floating-point weights' dtype (None: as
    the checkpoint stores them; see :mod:`alphasel.training.precision` for the policy).
    """
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise TrainConfigError("an in-memory model needs its tokenizer: pass tokenizer=... "
                                   "to alphasel.train")
        if quantize:
            raise TrainConfigError("--quantize 4bit needs a checkpoint to load, not an "
                                   "in-memory model: pass the model's path or hub id")
        config = getattr(model, "config", None)
        name = getattr(config, "name_or_path", "") or type(model).__name__
        info = ModelInfo(name, None, f"in-memory {type(model).__name__}", "module")
        if dtype is not None and module_dtype(model) != dtype \
                and not any(is_packed(p) for p in model.parameters()):  # packed: uncastable
            model.to(dtype)
        return model, _pad_with_eos(tokenizer), info
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    text = str(model)
    folder, gguf_file, info = _locate(text, revision)
    tokenizer = tokenizer or _tokenizer(folder, gguf_file, text)
    kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    if gguf_file:
        if quantize:
            raise TrainConfigError(f"--quantize 4bit needs a float checkpoint, but '{text}' is "
                                   "a GGUF file: pass a safetensors checkpoint or hub id, or "
                                   "drop --quantize")
        from transformers import GgufConfig

        # Dense float32 weights: packed GGUF blocks (kept when the `kernels` package offers a
        # matmul kernel) cannot train.
        kwargs.update(gguf_file=gguf_file, quantization_config=GgufConfig(dequantize=True))
    if quantize == "4bit":
        kwargs["quantization_config"] = _quantization_config()
    if task == "classification":
        if not labels:
            raise TrainConfigError("a classification model needs the data's labels")
        loader = AutoModelForSequenceClassification
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: index for index, label in enumerate(labels)})
    elif task == "regression":
        loader = AutoModelForSequenceClassification
        kwargs.update(num_labels=1, problem_type="regression")
    else:
        loader = AutoModelForCausalLM
    if task != "causal":
        # A checkpoint fine-tuned with another head (3 classes, and now 2 or a score) gets a
        # new one of the data's size; transformers would refuse the mismatch.
        kwargs["ignore_mismatched_sizes"] = True
    # transformers reports "newly initialised weights" of a new classification head as a
    # warning; that head is expected here, so keep its logger quiet during the load.
    previous = logging.getLogger("transformers.modeling_utils").level
    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    try:
        with library_bars():  # the GGUF loader's own bar
            loaded = loader.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError) as err:
        what = "causal LM" if task == "causal" else f"sequence {task} model"
        raise SourceError(f"transformers cannot load '{text}' as a {what} ({err}): check that "
                          "it is a checkpoint of that kind") from err
    finally:
        logging.getLogger("transformers.modeling_utils").setLevel(previous)
    if gguf_file and getattr(loaded, "hf_quantizer", None) is not None:
        # The weights are dense now, but the model still says "quantized with GGUF", which the
        # Trainer refuses to train; drop that marker.
        loaded.hf_quantizer.remove_quantization_config(loaded)
    if loaded.config.pad_token_id is None:
        loaded.config.pad_token_id = tokenizer.pad_token_id
    return loaded, tokenizer, info
