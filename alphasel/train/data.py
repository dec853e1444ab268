"""Training data → tokenized train/eval splits: the entry is `load_data(spec, tokenizer, ...)`.

Sources: the built-in offline sets (`BUILTIN`, from the installed standard library), Alpaca
JSON/JSONL files, CSV/JSONL classification files, plain text or code files and directories,
local data set directories and Hugging Face hub ids (through `datasets.load_dataset`, which
honours the HF cache and offline switches itself).

Splits are decided before anything is sampled, by a stable hash of the unit they are made of —
a file's relative path for file-based data, a record's content for record-based data — so eval
text is never seen in training, whatever `seed` and `max_samples` are. The seed only orders the
units and examples, and `max_samples` caps each split after that seeded shuffle.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import math
import os
import random
import re
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from alphasel.errors import DataError

__all__ = ["ALPACA_PROMPT", "ALPACA_PROMPT_NO_INPUT", "BUILTIN", "TrainData", "alpaca_prompt",
           "load_data"]

#: Built-in data set name → one-line description; built from the installed standard library
#: by `alphasel.train.stdlib_data`, so they work offline.
BUILTIN = {
    "stdlib-code": "Python standard library source files as plain code for causal LM (kind text)",
    "stdlib-instruct": "stdlib functions and methods: signature + docstring → source "
                       "(kind instruction)",
    "stdlib-topics": "stdlib docstrings labelled with the package they come from "
                     "(kind classification)",
}

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")

TASKS = ("causal", "classification")
TEMPLATES = ("alpaca", "chat")
#: A document's last chunk shorter than this is dropped: a handful of tokens (often just the
#: tail of a file and EOS) is noise rather than a training sequence.
MIN_CHUNK = 8
#: Files read as records (Alpaca, classification) rather than as plain text.
RECORD_SUFFIXES = (".json", ".jsonl", ".csv")
#: A directory holding only files like these (and READMEs) is a data set for `load_dataset`.
DATASET_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow")
NUM_PROMPTS = 4
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_SIDES = ("train", "eval")


@dataclass
class TrainData:
    """Tokenized train and eval splits in the format the trainer feeds to TRL / transformers."""

    name: str
    """What the user passed: a built-in name, a path or a hub id."""
    kind: str
    """`text` (columns `input_ids`), `instruction` (`prompt`, `completion`) or `classification`
    (`input_ids`, `attention_mask`, `labels`)."""
    train: datasets.Dataset
    eval: datasets.Dataset
    labels: list[str] | None
    """Class names, index = label id (classification only)."""
    fingerprint: str
    """sha256 of both splits' content: the same data and options give the same fingerprint."""
    description: str
    """One line for logs and the run record."""
    prompts: list[str]
    """A few eval prompts for greedy generation before and after training (empty for
    classification)."""
    details: dict
    """Counts and options for the run record's config.json (JSON-serialisable)."""


@dataclass(frozen=True)
class _Options:
    """load_data's options, checked, passed down as one value."""

    tokenizer: Any
    task: str
    template: str
    max_seq_len: int
    max_samples: int | None
    eval_fraction: float
    seed: int

    def targets(self) -> dict[str, int | None]:
        """How many examples each split may keep; the eval cap keeps the eval fraction."""
        if self.max_samples is None:
            return {"train": None, "eval": None}
        # round() first: 9 * 0.1 / 0.9 is 1.0000000000000002 in floating point, not 1.
        ratio = round(self.max_samples * self.eval_fraction / (1 - self.eval_fraction), 9)
        return {"train": self.max_samples, "eval": max(1, math.ceil(ratio))}

    def rng(self, purpose: str) -> random.Random:
        """A generator of its own per purpose, so one shuffle does not shift the others."""
        return random.Random(f"{self.seed}:{purpose}")


def load_data(spec: str, tokenizer, *, task: str = "causal", template: str = "alpaca",
              max_seq_len: int = 512, max_samples: int | None = None,
              eval_fraction: float = 0.1, seed: int = 0) -> TrainData:
    """Load `spec` (built-in name, file, directory or hub id) as tokenized train/eval splits.

    What `spec` is, in this order: a name in BUILTIN; an existing directory — a data set for
    `datasets.load_dataset` when it holds only data files (.json/.jsonl/.csv/.parquet/.arrow)
    and READMEs, else a corpus of text files; an existing .json/.jsonl/.csv file (records:
    Alpaca `instruction`/`input`/`output`, `text`, or `text`/`label` with task classification);
    any other existing file (plain text); `name` or `org/name` (a hub dataset id).

    `task` is `causal` or `classification`; `template` (`alpaca` or `chat`) formats
    instruction data; `max_samples` caps the train split (and the eval split in proportion),
    None keeps everything. Raises DataError, naming the input and the fix, for anything that
    cannot be used.
    """
    options = _check_options(tokenizer, task, template, max_seq_len, max_samples,
                             eval_fraction, seed)
    spec = str(spec)
    if spec in BUILTIN:
        # Imported here: stdlib_data builds on this module's split and format functions.
        from alphasel.train.stdlib_data import load_builtin

        return load_builtin(spec, options)
    if spec.startswith("stdlib-"):
        raise DataError(f"unknown built-in data set '{spec}': use one of {', '.join(BUILTIN)}, "
                        "a file, a directory or a hub dataset id")
    path = Path(spec).expanduser()
    if path.is_dir():
        if _is_dataset_dir(path):
            return _from_records(spec, _hub_records(spec, path), options, unit="records")
        return _from_text_files(spec, path, options)
    if path.is_file():
        if path.suffix.lower() in RECORD_SUFFIXES:
            return _from_records(spec, _file_records(path), options, unit="records")
        return _from_text_files(spec, path, options)
    if _HUB_ID.match(spec) and not spec.lower().endswith(RECORD_SUFFIXES + (".txt", ".md")):
        return _from_records(spec, _hub_records(spec, spec), options, unit="records")
    raise DataError(f"'{spec}' does not exist: pass an existing file or directory, one of the "
                    f"built-in sets ({', '.join(BUILTIN)}) or a hub dataset id like org/name")


def _check_options(tokenizer, task, template, max_seq_len, max_samples, eval_fraction,
                   seed) -> _Options:
    problems = []
    if task not in TASKS:
        problems.append(f"--task {task!r} is unknown: use causal or classification")
    if template not in TEMPLATES:
        problems.append(f"--template {template!r} is unknown: use alpaca or chat")
    if not isinstance(max_seq_len, int) or max_seq_len < MIN_CHUNK:
        problems.append(f"--max-seq-len {max_seq_len} is too short: use at least {MIN_CHUNK}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        problems.append(f"--max-samples {max_samples} is not a positive integer: "
                        "use 1 or more, or leave it out for all examples")
    if not isinstance(eval_fraction, int | float) or not 0 < eval_fraction <= 0.5:
        problems.append(f"--eval-fraction {eval_fraction} is out of range: use a value in "
                        "(0, 0.5]")
    if task == "causal" and getattr(tokenizer, "eos_token_id", None) is None:
        problems.append("the tokenizer has no EOS token: causal LM data needs one to mark "
                        "where a document ends; use a tokenizer with eos_token set")
    if problems:
        raise DataError("; ".join(problems))
    return _Options(tokenizer, task, template, max_seq_len, max_samples, float(eval_fraction),
                    int(seed))


# ---------------------------------------------------------------------------------- splitting

def _hash_value(key: str) -> float:
    """A stable number in [0, 1) for a unit (hashlib: Python's hash() changes every run)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def _assign_sides(keys, eval_fraction: float) -> dict[str, str]:
    """Unit key → "train" or "eval" by hash; with two or more units neither side stays empty."""
    values = {key: _hash_value(key) for key in keys}
    sides = {key: "eval" if value < eval_fraction else "train" for key, value in values.items()}
    if len(values) >= 2 and "eval" not in sides.values():
        sides[min(values, key=values.get)] = "eval"
    elif len(values) >= 2 and "train" not in sides.values():
        sides[max(values, key=values.get)] = "train"
    return sides


def _gather(order: list, sides: Mapping, produce: Callable[[list], list[list[dict]]],
            options: _Options) -> dict[str, list[tuple[Any, dict]]]:
    """Walk the units in (seeded) order and turn them into rows, in growing batches, until
    both splits have what max_samples asks for: the built-in sets then tokenize a few files,
    not the whole standard library."""
    targets = options.targets()
    rows: dict[str, list] = {"train": [], "eval": []}

    def full(side: str) -> bool:
        return targets[side] is not None and len(rows[side]) >= targets[side]

    position, size = 0, 4
    while position < len(order) and not (full("train") and full("eval")):
        batch = []
        while position < len(order) and len(batch) < size:
            if not full(sides[order[position]]):
                batch.append(order[position])
            position += 1
        for unit, produced in zip(batch, produce(batch), strict=True):
            rows[sides[unit]].extend((unit, row) for row in produced)
        size = min(2 * size, 256)
    return rows


def _finish_rows(rows: dict[str, list], options: _Options, leak_keys: Callable[[dict], list],
                 details: dict) -> dict[str, list]:
    """Drop eval rows whose text also occurs in train (duplicate files or records across the
    split), then shuffle each split with the seed and cap it."""
    seen = {key for _, row in rows["train"] for key in leak_keys(row)}
    kept = [(unit, row) for unit, row in rows["eval"]
            if not any(key in seen for key in leak_keys(row))]
    details["eval_duplicates_dropped"] = len(rows["eval"]) - len(kept)
    rows = {"train": rows["train"], "eval": kept}
    targets = options.targets()
    for side in _SIDES:
        options.rng(side).shuffle(rows[side])
        rows[side] = rows[side][:targets[side]]
    return rows


def _check_not_empty(name: str, rows: dict[str, list], why: str) -> None:
    for side in _SIDES:
        if not rows[side]:
            raise DataError(f"{name} leaves no {side} examples ({why}): add data, or raise "
                            "--eval-fraction if eval is the empty one")


# ---------------------------------------------------------------------------------- text kind

def _chunks(ids: list[int], max_seq_len: int) -> list[list[int]]:
    """Consecutive chunks of one document; a short last chunk is dropped."""
    pieces = [ids[start:start + max_seq_len] for start in range(0, len(ids), max_seq_len)]
    return [piece for piece in pieces if len(piece) >= MIN_CHUNK or piece is not pieces[-1]]


def _tokenize_documents(texts: list[str], options: _Options) -> list[list[list[int]]]:
    """Each document's chunks, EOS appended at the document's end (so the model learns to
    stop), never a chunk across two documents."""
    if not texts:
        return []
    encoded = options.tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = options.tokenizer.eos_token_id
    return [_chunks(list(ids) + [eos], options.max_seq_len) for ids in encoded]


def _text_data(name: str, keys: list[str], read: Callable[[str], str | None],
               options: _Options, unit: str, details: dict) -> TrainData:
    """Kind text from documents `keys` (files or records), split by unit — or, with a single
    document, by position."""
    details["split"] = f"by {unit[:-1]}"
    heads: dict[str, str] = {}
    if len(keys) == 1:
        text = read(keys[0]) or ""
        chunks = _tokenize_documents([text], options)[0]
        if len(chunks) < 2:
            raise DataError(f"{name} gives {len(chunks)} chunk(s) of ≤{options.max_seq_len} "
                            "tokens, too few to split into train and eval: add text or lower "
                            "--max-seq-len")
        n_eval = min(len(chunks) - 1, max(1, round(len(chunks) * options.eval_fraction)))
        details["split"] = f"by position: one document, its last {n_eval} chunks are eval"
        rows = {"train": [(keys[0], {"input_ids": ids}) for ids in chunks[:-n_eval]],
                "eval": [(keys[0], {"input_ids": ids}) for ids in chunks[-n_eval:]]}
        # The eval part starts mid-document: prompt with the text where it starts.
        heads[keys[0]] = _head(options.tokenizer.decode(chunks[-n_eval][:64],
                                                        skip_special_tokens=True))
    else:
        sides = _assign_sides(keys, options.eval_fraction)
        order = list(keys)
        options.rng("units").shuffle(order)

        def produce(batch: list[str]) -> list[list[dict]]:
            texts = {key: read(key) for key in batch}
            readable = [key for key in batch if texts[key] is not None]
            heads.update((key, _head(texts[key])) for key in readable)
            details["unreadable_skipped"] = (details.get("unreadable_skipped", 0)
                                             + len(batch) - len(readable))
            chunked = dict(zip(readable, _tokenize_documents([texts[key] for key in readable],
                                                             options), strict=True))
            return [[{"input_ids": ids} for ids in chunked.get(key, [])] for key in batch]

        rows = _gather(order, sides, produce, options)
    # A digest per chunk, not the chunk: the train side of the stdlib holds ~10⁷ ids.
    rows = _finish_rows(rows, options, lambda row: [hashlib.blake2b(
        _canonical(row["input_ids"]), digest_size=16).digest()], details)
    _check_not_empty(name, rows, f"chunks of ≥{MIN_CHUNK} tokens split {details['split']}")
    prompts = [heads[key] for key in _units_in_order(rows["eval"])[:NUM_PROMPTS]]
    return _build(name, "text", rows, None, [p for p in prompts if p.strip()], options,
                  details, f"chunks of ≤{options.max_seq_len} tokens", unit)


def _head(text: str, size: int = 160) -> str:
    """A document's opening (≤ size characters), ending on a line break when there is one: a
    clean place for a generation prompt to stop."""
    cut = text.rfind("\n", 0, size)
    return text[:cut + 1] if cut >= 20 else text[:size]


def _units_in_order(rows: list[tuple[Any, dict]]) -> list:
    """The distinct units of a split, in the split's order."""
    return list(dict.fromkeys(unit for unit, _ in rows))


def _first_per_unit(rows: list[tuple[Any, dict]]) -> list[dict]:
    """The first row of each of the first NUM_PROMPTS units, for generation prompts."""
    first: dict = {}
    for unit, row in rows:
        first.setdefault(unit, row)
    return list(first.values())[:NUM_PROMPTS]


# --------------------------------------------------------------------------- instruction kind

def alpaca_prompt(instruction: str, context: str = "") -> str:
    """The Alpaca prompt for an instruction and its optional input, ending at `### Response:`."""
    template = ALPACA_PROMPT if context else ALPACA_PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=context)


def _format(instruction: str, context: str, output: str, options: _Options) -> dict:
    """One prompt-completion row in TRL's format: strings (alpaca) or message lists (chat).
    `_raw` (the instruction as a user would type it) is kept for the generation prompts and
    removed before the splits are built."""
    raw = instruction + ("\n\n" + context if context else "")
    if options.template == "chat":
        return {"prompt": [{"role": "user", "content": raw}],
                "completion": [{"role": "assistant", "content": output}], "_raw": raw}
    return {"prompt": alpaca_prompt(instruction, context), "completion": output, "_raw": raw}


def _prompt_lengths(prompts: list, options: _Options) -> list[int]:
    """Tokens of each prompt as TRL will see it (chat: with the generation prompt)."""
    if not prompts:
        return []
    tokenizer = options.tokenizer
    if options.template == "chat":
        encoded = tokenizer.apply_chat_template(prompts, tokenize=True,
                                                add_generation_prompt=True)
        # transformers 5 returns a BatchEncoding here, older versions a list of id lists.
        ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
    else:
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return [len(item) for item in ids]


def _instruction_data(name: str, keys: list, sides: Mapping,
                      records_of: Callable[[Any], list[tuple[str, str, str]]],
                      options: _Options, unit: str, details: dict) -> TrainData:
    """Kind instruction: units (files or records) → prompt/completion rows, dropping rows
    whose prompt alone fills max_seq_len (truncation would leave no response to learn)."""
    if options.template == "chat" and not getattr(options.tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template: use --template alpaca")
    details.update(template=options.template, dropped_no_response=0)
    shortest = {"train": None, "eval": None}

    def produce(batch: list) -> list[list[dict]]:
        formatted = [[_format(*record, options) for record in records_of(key)]
                     for key in batch]
        lengths = iter(_prompt_lengths([row["prompt"] for rows in formatted for row in rows],
                                       options))
        kept = []
        for key, rows in zip(batch, formatted, strict=True):
            kept.append([])
            for row in rows:
                length = next(lengths)
                side = sides[key]
                shortest[side] = min(length, shortest[side] or length)
                if length < options.max_seq_len:
                    kept[-1].append(row)
                else:
                    details["dropped_no_response"] += 1
        return kept

    order = list(keys)
    options.rng("units").shuffle(order)
    rows = _gather(order, sides, produce, options)
    for side in _SIDES:
        if not rows[side] and shortest[side] is not None:
            raise DataError(
                f"--max-seq-len {options.max_seq_len} leaves no response tokens in any example "
                f"of {name} ({side} split): the shortest prompt is {shortest[side]} tokens; "
                f"raise --max-seq-len above {shortest[side]}")

    def leak_keys(row: dict) -> list[str]:
        return [json.dumps(row["prompt"], sort_keys=True),
                json.dumps(row["completion"], sort_keys=True)]

    rows = _finish_rows(rows, options, leak_keys, details)
    _check_not_empty(name, rows, f"split {details['split']}")
    # Raw instructions: the trainer puts them in the template itself (generations.py).
    prompts = [row["_raw"] for row in _first_per_unit(rows["eval"])]
    return _build(name, "instruction", rows, None, prompts, options, details,
                  f"instruction examples ({options.template} template)", unit)


# ------------------------------------------------------------------------ classification kind

def _label_names(values: list) -> list[str]:
    """Sorted unique label names; integer-like labels sort as numbers (2 before 10)."""
    unique = {str(value) for value in values}
    return sorted(unique, key=lambda text: (0, int(text), "") if re.fullmatch(r"-?\d+", text)
                  else (1, 0, text))


def _classification_data(name: str, rows: dict[str, list], labels: list[str],
                         options: _Options, unit: str, details: dict,
                         balance: bool = False) -> TrainData:
    """Kind classification from rows {"text", "label" (id)} already split. With `balance`
    every class keeps the same number of train examples (the smallest class's), and a capped
    eval split takes the classes in turn, so each class is evaluated."""
    if balance:
        by_class: dict[str, dict[int, list]] = {side: {} for side in _SIDES}
        for side in _SIDES:
            for item in rows[side]:
                by_class[side].setdefault(item[1]["label"], []).append(item)
            for label in sorted(by_class[side]):
                options.rng(f"balance:{side}").shuffle(by_class[side][label])
        per_class = min(len(items) for items in by_class["train"].values())
        if options.max_samples is not None:
            per_class = min(per_class, options.max_samples // len(labels))
        if per_class == 0:
            raise DataError(f"--max-samples {options.max_samples} is fewer than the "
                            f"{len(labels)} classes of {name}: use at least {len(labels)}")
        in_turn = [item for index in range(max(map(len, by_class["eval"].values()), default=0))
                   for label in sorted(by_class["eval"])
                   for item in by_class["eval"][label][index:index + 1]]
        rows = {"train": [item for label in sorted(by_class["train"])
                          for item in by_class["train"][label][:per_class]],
                "eval": in_turn[:options.targets()["eval"]]}
        details["train_per_class"] = per_class
    rows = _finish_rows(rows, options, lambda row: [row["text"]], details)
    _check_not_empty(name, rows, f"split {details['split']}")
    for side in _SIDES:
        texts = [row["text"] for _, row in rows[side]]
        encoded = options.tokenizer(texts, truncation=True, max_length=options.max_seq_len)
        rows[side] = [(unit_key, {"input_ids": list(ids), "attention_mask": list(mask),
                                  "labels": row["label"]})
                      for (unit_key, row), ids, mask in zip(
                          rows[side], encoded["input_ids"], encoded["attention_mask"],
                          strict=True)]
        details[f"{side}_class_counts"] = dict(sorted(Counter(
            labels[row["labels"]] for _, row in rows[side]).items()))
    return _build(name, "classification", rows, labels, [], options, details,
                  f"texts in {len(labels)} classes", unit)


# ---------------------------------------------------------------------------------- assembly

def _build(name: str, kind: str, rows: dict[str, list], labels: list[str] | None,
           prompts: list[str], options: _Options, details: dict, what: str,
           unit: str) -> TrainData:
    """The TrainData: datasets, fingerprint, one-line description and the details."""
    columns = {side: _columns([row for _, row in rows[side]]) for side in _SIDES}
    digest = hashlib.sha256(json.dumps({"kind": kind, "labels": labels}).encode())
    for side in _SIDES:
        for column, values in columns[side].items():
            digest.update(f"\n#{side}.{column}\n".encode())
            for value in values:
                digest.update(_canonical(value) + b"\n")
    units = {side: len({key for key, _ in rows[side]}) for side in _SIDES}
    counts = {side: len(rows[side]) for side in _SIDES}
    source = (f" from {units['train']} / {units['eval']} {unit}"
              if not details["split"].startswith("by position") else " (one document)")
    details.update(kind=kind, task=options.task, max_seq_len=options.max_seq_len,
                   max_samples=options.max_samples, eval_fraction=options.eval_fraction,
                   seed=options.seed, train_examples=counts["train"],
                   eval_examples=counts["eval"], train_units=units["train"],
                   eval_units=units["eval"], unit=unit, labels=labels)
    if unit == "files":  # which files are held out, for the record (train: all the others)
        details["eval_files"] = sorted({key for key, _ in rows["eval"]})
    return TrainData(
        name=name, kind=kind,
        train=datasets.Dataset.from_dict(columns["train"]),
        eval=datasets.Dataset.from_dict(columns["eval"]),
        labels=labels, fingerprint=digest.hexdigest(),
        description=f"{name}: {counts['train']} train / {counts['eval']} eval {what}{source}",
        prompts=prompts[:NUM_PROMPTS], details=details)




def _columns(rows: list[dict]) -> dict[str, list]:
    """Rows → columns, without the `_` keys kept for bookkeeping (e.g. `_raw`)."""
    names = [name for name in (rows[0] if rows else {}) if not name.startswith("_")]
    return {name: [row[name] for row in rows] for name in names}


def _canonical(value) -> bytes:
    """Bytes of one cell for the fingerprint: token ids packed little-endian (fast for ~10⁷
    ids, the same on every machine), anything else as sorted-key JSON."""
    if isinstance(value, list) and value and isinstance(value[0], int):
        return b"i" + struct.pack(f"<{len(value)}q", *value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False).encode()


# ------------------------------------------------------------------------------- file sources

def _visible_files(root: Path) -> list[Path]:
    """Files below `root`, sorted, outside hidden directories and caches (never entered:
    a .git directory can hold more files than the corpus)."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders
                         if not name.startswith(".") and name != "__pycache__"]
        found.extend(Path(folder) / name for name in names if not name.startswith("."))
    return sorted(found)


def _is_dataset_dir(path: Path) -> bool:
    """A directory of data files (and READMEs) only: a data set for `load_dataset(dir)`."""
    files = _visible_files(path)
    data = [file for file in files if file.suffix.lower() in DATASET_SUFFIXES]
    return bool(data) and all(file in data or file.name.lower().startswith(("readme", "license"))
                              for file in files)


def _read_text(path: Path, sniff: bool = False) -> str | None:
    """A file's text, or None when it is binary (a NUL byte) or not UTF-8. `sniff` only looks
    at the first 8 KiB, to sort text files from binary ones without reading everything."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(8192 if sniff else -1)
        if b"\0" in raw[:8192]:
            return None
        # final=False: a sniffed prefix may end inside a multi-byte character.
        return codecs.getincrementaldecoder("utf-8")().decode(raw, final=not sniff)
    except (UnicodeDecodeError, OSError):
        return None


def _from_text_files(name: str, path: Path, options: _Options) -> TrainData:
    """Kind text from a text file or a directory of them, split by file."""
    if options.task != "causal":
        raise DataError(f"'{path}' is plain text, which has no labels: use --task causal, or "
                        "pass a CSV (text,label) or JSONL ({\"text\", \"label\"}) file")
    files = {path.name: path} if path.is_file() else {
        file.relative_to(path).as_posix(): file for file in _visible_files(path)
        if file.stat().st_size > 0 and _read_text(file, sniff=True) is not None}
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"'{path}' is empty: pass a file with text in it")
    if path.is_file() and _read_text(path) is None:
        raise DataError(f"'{path}' is not a text file (binary or not UTF-8): pass a UTF-8 text "
                        "file, or a JSON/JSONL/CSV data file")
    if not files:
        raise DataError(f"'{path}' holds no non-empty text files outside hidden directories: "
                        "pass a directory with text or code files")
    details = {"source": "file" if path.is_file() else "directory", "path": str(path),
               "files_found": len(files)}
    return _text_data(name, sorted(files), lambda key: _read_text(files[key]), options, "files",
                      details)


def _file_records(path: Path) -> tuple[str, list[tuple[str, dict]], None]:
    """(source, [(where, record)], label names) from a JSON, JSONL or CSV file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"'{path}' is not UTF-8 text (byte {error.start}): save it as UTF-8"
                        ) from error
    if not text.strip():
        raise DataError(f"'{path}' is empty: pass a file with records in it")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _csv_records(path, text)
    elif suffix == ".jsonl":
        records = _jsonl_records(path, text)
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":
                raise DataError(f"'{path}', line {error.lineno}: not valid JSON ({error.msg}): "
                                "fix the file (a JSON list of records, or JSONL)") from error
            records = _jsonl_records(path, text)  # one record per line, named .json
        else:
            if not isinstance(loaded, list):
                raise DataError(f"'{path}' holds a JSON {type(loaded).__name__}, not a list of "
                                "records: wrap the records in [...] or write one per line (JSONL)")
            records = [(f"'{path}', record {number}", record)
                       for number, record in enumerate(loaded, 1)]
    if not records:
        raise DataError(f"'{path}' holds no records: add at least two")
    for where, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{where}: a {type(record).__name__}, not an object with named "
                            "fields: write each record as {\"field\": value, ...}")
    return str(path), records, None


def _jsonl_records(path: Path, text: str) -> list[tuple[str, dict]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append((f"'{path}', line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"'{path}', line {number}: not valid JSON ({error.msg}): fix "
                                "or remove that line") from error
    return records


def _csv_records(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(text.splitlines(keepends=True), strict=True)
    records = []
    try:
        for row in reader:
            if None in row or None in row.values():
                raise DataError(f"'{path}', line {reader.line_num}: {len(reader.fieldnames)} "
                                f"columns expected ({', '.join(reader.fieldnames)}): fix the "
                                "row's commas or quote its text")
            records.append((f"'{path}', line {reader.line_num}", row))
    except csv.Error as error:
        raise DataError(f"'{path}', line {reader.line_num}: malformed CSV ({error}): fix the "
                        "row's quoting") from error
    return records


def _hub_records(spec: str, target: str | Path) -> tuple[str, list[tuple[str, dict]], list | None]:
    """(source, [(where, record)], ClassLabel names or None) of a hub id or local data set
    directory, read by `datasets.load_dataset` (which honours HF_HOME and the offline flags)."""
    try:
        dataset = datasets.load_dataset(str(target), split="train")
    except (OSError, datasets.exceptions.DatasetsError, ValueError) as error:
        reason = " ".join(str(error).split())
        # Not found, can't reach the hub, offline: these say the id is not in the cache.
        if isinstance(target, Path) or not isinstance(error, ConnectionError | FileNotFoundError):
            raise DataError(f"'{target}' cannot be read by datasets.load_dataset ({reason}): "
                            "fix its data files, or pass one JSON/JSONL/CSV file directly"
                            ) from error
        raise DataError(f"'{spec}' is neither a local file or directory nor a data set in the "
                        f"Hugging Face cache ({type(error).__name__}: {reason}): download it "
                        f"where there is network (datasets.load_dataset('{spec}')), point "
                        "HF_HOME at a cache that has it, or pass a local file") from error
    label = dataset.features.get("label")
    names = list(label.names) if isinstance(label, datasets.ClassLabel) else None
    records = [(f"'{spec}', row {number}", record)
               for number, record in enumerate(dataset.to_list(), 1)]
    if not records:
        raise DataError(f"'{spec}' has an empty train split: pass a data set with records")
    return str(spec), records, names


def _text_field(where: str, record: dict, field: str, required: bool = True) -> str:
    """A record's text field, checked: DataError naming the record when missing or not text."""
    value = record.get(field)
    if value is None and not required:
        return ""
    if value is None:
        raise DataError(f"{where}: the record has no '{field}' (it has: "
                        f"{', '.join(map(str, record)) or 'nothing'}): add it")
    if not isinstance(value, str):
        raise DataError(f"{where}: '{field}' is a {type(value).__name__}, not text: write it as "
                        "a string")
    return value


def _from_records(name: str, loaded: tuple[str, list[tuple[str, dict]], list | None],
                  options: _Options, unit: str) -> TrainData:
    """Record-based data (files or `load_dataset`), split by record content: identical records
    always land on the same side."""
    source, records, class_names = loaded
    fields = list(records[0][1])
    details: dict = {"source": source, "records_found": len(records), "split": "by record"}
    if options.task == "classification":
        if not {"text", "label"} <= set(fields):
            raise DataError(f"'{source}' has no 'text' and 'label' columns (it has: "
                            f"{', '.join(map(str, fields))}): classification data needs both; "
                            "rename them, or use --task causal for instruction or text data")
        pairs = []
        for where, record in records:
            label = record.get("label")
            if isinstance(label, bool) or not isinstance(label, str | int) or label == "":
                raise DataError(f"{where}: the label {label!r} is not a class name or id: "
                                "use a string or an integer")
            pairs.append((_text_field(where, record, "text"), label))
        labels = class_names or _label_names([label for _, label in pairs])
        if len({str(label) for _, label in pairs}) < 2:
            raise DataError(f"'{source}' has only the label(s) "
                            f"{sorted({str(label) for _, label in pairs})}: classification "
                            "needs at least 2 classes")
        sides = _assign_sides(sorted({text for text, _ in pairs}), options.eval_fraction)
        _need_two(source, len(sides))
        rows: dict[str, list] = {"train": [], "eval": []}
        for text, label in pairs:
            label_id = label if class_names else labels.index(str(label))
            rows[sides[text]].append((text, {"text": text, "label": label_id}))
        return _classification_data(name, rows, labels, options, unit, details)
    if "instruction" in fields or "output" in fields:  # Alpaca; a record lacking one is named
        triples = [(_text_field(where, record, "instruction"),
                    _text_field(where, record, "input", required=False),
                    _text_field(where, record, "output")) for where, record in records]
        contents = [f"{instruction}\0{context}" for instruction, context, _ in triples]
        content_sides = _assign_sides(sorted(set(contents)), options.eval_fraction)
        _need_two(source, len(content_sides))
        sides = {index: content_sides[content] for index, content in enumerate(contents)}
        return _instruction_data(name, list(range(len(triples))), sides,
                                 lambda index: [triples[index]], options, unit, details)
    if "text" in fields:
        texts = list(dict.fromkeys(_text_field(where, record, "text")
                                   for where, record in records))
        return _text_data(name, texts, lambda text: text, options, unit, details)
    raise DataError(f"'{source}' has neither 'instruction' and 'output' (Alpaca) nor 'text' "
                    f"fields (it has: {', '.join(map(str, fields))}): rename them")


def _need_two(source: str, distinct: int) -> None:
    if distinct < 2:
        raise DataError(f"'{source}' has {distinct} distinct record(s): at least 2 are needed "
                        "to split it into train and eval")
