"""Greedy completions of a few prompts, before and after training, so a user sees what changed.

Prompts come from ``--prompts FILE`` (one per line, or a JSON list, or JSONL with ``prompt``) or
from the data set (``TrainData.prompts``). Instruction prompts are put in the same template the
model trained on (Alpaca text or the tokenizer's chat template).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from alphasel.errors import DataError
from alphasel.training.record import GENERATIONS_FILE, RunWriter


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line), a JSON list of strings, or JSONL objects with a
    ``prompt`` (or ``instruction``) field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--prompts file '{path}' does not exist: pass a text file with one "
                        "prompt per line")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"--prompts file '{path}' line {err.lineno} is not valid JSON "
                            f"({err.msg}): fix it or use one prompt per line") from err
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise DataError(f"--prompts file '{path}' must hold a JSON list of strings")
    elif path.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"--prompts file '{path}' line {number} is not valid JSON "
                                f"({err.msg})") from err
            prompt = record.get("prompt", record.get("instruction")) if isinstance(
                record, dict) else None
            if not isinstance(prompt, str):
                raise DataError(f"--prompts file '{path}' line {number} has no 'prompt' string")
            prompts.append(prompt)
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"--prompts file '{path}' holds no prompt: add at least one line")
    return prompts


def format_prompt(prompt: str, kind: str, template: str, tokenizer: Any) -> str:
    """The text the model sees: raw for text data, templated for instruction data."""
    if kind != "instruction":
        return prompt
    if template == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    from alphasel.training.data import alpaca_prompt

    return alpaca_prompt(prompt, "")


@torch.no_grad()
def complete(model: torch.nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int,
             add_special_tokens: bool = False, autocast: torch.dtype | None = None) -> list[str]:
    """Greedy completions (the new text only), one prompt at a time: no padding to get wrong.
    ``add_special_tokens`` as the prompts were tokenized in training (BOS for Alpaca text).
    ``autocast``: the run's mixed precision, which the Trainer applies to its own forward
    passes only; a half base holding float32 (trained, folded) matrices needs it here too."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    completions = []
    precision = (torch.autocast(device.type, dtype=autocast) if autocast is not None
                 else contextlib.nullcontext())
    try:
        for prompt in prompts:
            encoded = tokenizer(prompt, return_tensors="pt",
                                add_special_tokens=add_special_tokens).to(device)
            with precision:
                output = model.generate(**encoded, max_new_tokens=max_new_tokens,
                                        do_sample=False, pad_token_id=tokenizer.pad_token_id)
            new = output[0, encoded["input_ids"].shape[1]:]
            completions.append(tokenizer.decode(new, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return completions


def record_generations(writer: RunWriter, when: str, model: torch.nn.Module, tokenizer: Any,
                       prompts: list[str], max_new_tokens: int, add_special_tokens: bool,
                       autocast: torch.dtype | None = None) -> None:
    """Append one generations.jsonl line per prompt: ``when`` (before/after), prompt, completion
    (generated under ``autocast``, see :func:`complete`)."""
    completions = complete(model, tokenizer, prompts, max_new_tokens, add_special_tokens,
                           autocast)
    for prompt, text in zip(prompts, completions, strict=True):
        writer.append(GENERATIONS_FILE, {"when": when, "prompt": prompt, "completion": text})
