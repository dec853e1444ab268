"""Deterministic, leak-free train/eval splits and their tokenized rows.

Every source (`alphasel.training.data`, `alphasel.training.stdlib_data`) hands this module units —
files or records — and how to turn one into rows; this module decides the sides, gathers,
dedupes, caps, tokenizes and formats, and builds the `TrainData` with its fingerprint.

Splits are decided before anything is sampled, by a stable hash of the unit they are made of —
a file's relative path for file-based data, a record's content for record-based data — so eval
text is never seen in training, whatever `seed` and `max_samples` are. The seed only orders the
units and examples, and `max_samples` caps each split after that seeded shuffle. The eval side
has a seed of its own, `eval_seed`: which held-out units and examples a capped eval split keeps,
and their order, never depend on the training seed, so runs that differ only in `seed` are
evaluated on the same examples. A train row whose text also occurs in the eval split (a
duplicate file or record across the split) is dropped: the eval split is decided first, alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import datasets

from alphasel.errors import DataError

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")

#: A document's last chunk shorter than this is dropped: a handful of tokens (often just the
#: tail of a file and EOS) is noise rather than a training sequence.
MIN_CHUNK = 8
#: Generation prompts kept per data set: enough to see what training changed, few enough to
#: read and to generate before and after training without slowing a run.
NUM_PROMPTS = 4
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
class SplitOptions:
    """load_data's options, checked, passed down as one value."""

    tokenizer: Any
    task: str
    template: str
    max_seq_len: int
    max_samples: int | None
    eval_fraction: float
    seed: int
    eval_seed: int = 0

    def targets(self) -> dict[str, int | None]:
        """How many examples each split may keep; the eval cap keeps the eval fraction."""
        if self.max_samples is None:
            return {"train": None, "eval": None}
        # round() first: 9 * 0.1 / 0.9 is 1.0000000000000002 in floating point, not 1.
        ratio = round(self.max_samples * self.eval_fraction / (1 - self.eval_fraction), 9)
        return {"train": self.max_samples, "eval": max(1, math.ceil(ratio))}

    def rng(self, purpose: str, side: str = "train") -> random.Random:
        """A generator of its own per purpose, so one shuffle does not shift the others; the
        eval side's from ``eval_seed``, the train side's from ``seed``."""
        return random.Random(f"{self.eval_seed if side == 'eval' else self.seed}:{purpose}")

    def unit_order(self, keys: list, sides: Mapping) -> dict[str, list]:
        """Each side's units in its own seeded order (the eval side's from ``eval_seed``)."""
        orders = {}
        for side in _SIDES:
            order = list(keys)
            self.rng("units", side).shuffle(order)
            orders[side] = [key for key in order if sides[key] == side]
        return orders


# ---------------------------------------------------------------------------------- splitting

def hash_value(key: str) -> float:
    """A stable number in [0, 1) for a unit (hashlib: Python's hash() changes every run)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def assign_sides(keys, eval_fraction: float) -> dict[str, str]:
    """Unit key → "train" or "eval" by hash; with two or more units neither side stays empty."""
    values = {key: hash_value(key) for key in keys}
    sides = {key: "eval" if value < eval_fraction else "train" for key, value in values.items()}
    if len(values) >= 2 and "eval" not in sides.values():
        sides[min(values, key=values.get)] = "eval"
    elif len(values) >= 2 and "train" not in sides.values():
        sides[max(values, key=values.get)] = "train"
    return sides


def _gather(orders: dict[str, list], produce: Callable[[list], list[list[dict]]],
            options: SplitOptions) -> dict[str, list[tuple[Any, dict]]]:
    """Walk each side's units in its seeded order (:meth:`SplitOptions.unit_order`) and turn
    them into rows, in growing batches, until the side has what max_samples asks for: the
    built-in sets then tokenize a few files, not the whole standard library. The sides are
    walked apart, so what the eval side gathers never depends on the training seed, and the
    eval side reads at least as many units as it keeps rows, so that a capped eval split is a
    sample of many held-out files rather than the chunks of the first one."""
    targets = options.targets()
    rows: dict[str, list] = {"train": [], "eval": []}

    def full(side: str, read: int) -> bool:
        target = targets[side]
        return target is not None and len(rows[side]) >= target and (
            side == "train" or read >= target)

    for side in _SIDES:
        order, position, size = orders[side], 0, 4
        while position < len(order) and not full(side, position):
            batch, position = order[position:position + size], position + size
            for unit, produced in zip(batch, produce(batch), strict=True):
                rows[side].extend((unit, row) for row in produced)
            size = min(2 * size, 256)
    return rows


def _finish_rows(rows: dict[str, list], options: SplitOptions, leak_keys: Callable[[dict], list],
                 details: dict) -> dict[str, list]:
    """Shuffle the eval rows with the eval seed and cap them; drop the train rows whose text
    also occurs in the eval split (duplicate files or records across the split: training never
    sees an evaluated text), then shuffle the train rows with the seed and cap them. The eval
    split is decided first and alone, so it never depends on the training seed."""
    targets = options.targets()
    evaluated = list(rows["eval"])
    options.rng("eval", "eval").shuffle(evaluated)
    evaluated = evaluated[:targets["eval"]]
    held = {key for _, row in evaluated for key in leak_keys(row)}
    trained = [(unit, row) for unit, row in rows["train"]
               if not any(key in held for key in leak_keys(row))]
    details["train_duplicates_dropped"] = len(rows["train"]) - len(trained)
    options.rng("train", "train").shuffle(trained)
    return {"train": trained[:targets["train"]], "eval": evaluated}


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


def _tokenize_documents(texts: list[str], options: SplitOptions) -> list[list[list[int]]]:
    """Each document's chunks, EOS appended at the document's end (so the model learns to
    stop), never a chunk across two documents."""
    if not texts:
        return []
    encoded = options.tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = options.tokenizer.eos_token_id
    return [_chunks(list(ids) + [eos], options.max_seq_len) for ids in encoded]


def text_data(name: str, keys: list[str], read: Callable[[str], str | None],
              options: SplitOptions, unit: str, details: dict,
              prompts_of: Callable[[list[str]], list[str]] | None = None,
              sides: Mapping | None = None) -> TrainData:
    """Kind text from documents `keys` (files or records), split by unit — or, with a single
    document, by position; ``sides`` (key → train/eval) splits them as a data set's own splits
    do instead.

    The generation prompts are the openings of the first eval documents, or, with `prompts_of`,
    what it makes of the held-out units: those of the eval split in its order, then the other
    eval-side units in the order the split walked them.
    """
    details["split"] = f"by {unit[:-1]}" if sides is None else "by the data set's splits"
    heads: dict[str, str] = {}
    held_out: list[str] = []
    if len(keys) == 1 and sides is None:
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
        sides = assign_sides(keys, options.eval_fraction) if sides is None else sides
        orders = options.unit_order(keys, sides)
        held_out = orders["eval"]

        def produce(batch: list[str]) -> list[list[dict]]:
            texts = {key: read(key) for key in batch}
            readable = [key for key in batch if texts[key] is not None]
            heads.update((key, _head(texts[key])) for key in readable)
            details["unreadable_skipped"] = (details.get("unreadable_skipped", 0)
                                             + len(batch) - len(readable))
            chunked = dict(zip(readable, _tokenize_documents([texts[key] for key in readable],
                                                             options), strict=True))
            return [[{"input_ids": ids} for ids in chunked.get(key, [])] for key in batch]

        rows = _gather(orders, produce, options)
    # A digest per chunk, not the chunk: the train side of the stdlib holds ~10⁷ ids.
    rows = _finish_rows(rows, options, lambda row: [hashlib.blake2b(
        _canonical(row["input_ids"]), digest_size=16).digest()], details)
    _check_not_empty(name, rows, f"chunks of ≥{MIN_CHUNK} tokens split {details['split']}")
    eval_units = _units_in_order(rows["eval"])
    if prompts_of is None:
        prompts = [heads[key] for key in eval_units[:NUM_PROMPTS]]
    else:
        # Eval-side units beyond the capped eval split are as unseen in training, and a small
        # --max-samples leaves only two or three units in the split.
        prompts = prompts_of(list(dict.fromkeys(eval_units + held_out)))
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
    """The first row of each of the first NUM_PROMPTS units, for generation prompts; with
    fewer units than that (a small capped split), further rows in the split's order."""
    first: dict = {}
    for unit, row in rows:
        first.setdefault(unit, row)
    chosen = list(first.values())[:NUM_PROMPTS]
    others = [row for _, row in rows if all(row is not taken for taken in chosen)]
    return chosen + others[:NUM_PROMPTS - len(chosen)]


# --------------------------------------------------------------------------- instruction kind

def alpaca_prompt(instruction: str, context: str = "") -> str:
    """The Alpaca prompt for an instruction and its optional input, ending at `### Response:`."""
    template = ALPACA_PROMPT if context else ALPACA_PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=context)


def _format(instruction: str, context: str, output: str, options: SplitOptions) -> dict:
    """One prompt-completion row in TRL's format: strings (alpaca) or message lists (chat).
    `_raw` (the instruction as a user would type it) is kept for the generation prompts and
    removed before the splits are built."""
    raw = instruction + ("\n\n" + context if context else "")
    if options.template == "chat":
        return {"prompt": [{"role": "user", "content": raw}],
                "completion": [{"role": "assistant", "content": output}], "_raw": raw}
    return {"prompt": alpaca_prompt(instruction, context), "completion": output, "_raw": raw}


def _prompt_lengths(prompts: list, options: SplitOptions) -> list[int]:
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


def instruction_data(name: str, keys: list, sides: Mapping,
                     records_of: Callable[[Any], list[tuple[str, str, str]]],
                     options: SplitOptions, unit: str, details: dict) -> TrainData:
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

    rows = _gather(options.unit_order(keys, sides), produce, options)
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

def label_names(values: list) -> list[str]:
    """Sorted unique label names; integer-like labels sort as numbers (2 before 10)."""
    unique = {str(value) for value in values}
    return sorted(unique, key=lambda text: (0, int(text), "") if re.fullmatch(r"-?\d+", text)
                  else (1, 0, text))


def classification_data(name: str, rows: dict[str, list], labels: list[str] | None,
                        options: SplitOptions, unit: str, details: dict,
                        balance: bool = False, kind: str = "classification") -> TrainData:
    """Kind classification from rows {"text", "label" (id)} already split (a sentence pair's
    rows also have "pair", encoded with the text as the tokenizer encodes pairs); kind
    regression from rows whose label is a number (``labels`` None). With `balance` every class
    keeps the same number of train examples (the smallest class's), and a capped eval split
    takes the classes in turn, so each class is evaluated."""
    if balance:
        by_class: dict[str, dict[int, list]] = {side: {} for side in _SIDES}
        for side in _SIDES:
            for item in rows[side]:
                by_class[side].setdefault(item[1]["label"], []).append(item)
            for label in sorted(by_class[side]):
                options.rng(f"balance:{side}", side).shuffle(by_class[side][label])
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
    rows = _finish_rows(rows, options, lambda row: [row["text"] + "\0" + row.get("pair", "")],
                        details)
    _check_not_empty(name, rows, f"split {details['split']}")
    paired = any("pair" in row for side in _SIDES for _, row in rows[side])
    for side in _SIDES:
        texts = [row["text"] for _, row in rows[side]]
        pairs = [row["pair"] for _, row in rows[side]] if paired else None
        encoded = options.tokenizer(texts, pairs, truncation=True,
                                    max_length=options.max_seq_len)
        rows[side] = [(unit_key, {"input_ids": list(ids), "attention_mask": list(mask),
                                  **({"token_type_ids": list(types)} if types is not None
                                     else {}),
                                  "labels": row["label"]})
                      for (unit_key, row), ids, mask, types in zip(
                          rows[side], encoded["input_ids"], encoded["attention_mask"],
                          encoded.get("token_type_ids") or [None] * len(texts), strict=True)]
        if kind == "classification":
            details[f"{side}_class_counts"] = dict(sorted(Counter(
                labels[row["labels"]] for _, row in rows[side]).items()))
    what = (f"texts in {len(labels)} classes" if kind == "classification"
            else "texts with a score")
    if paired:
        what = what.replace("texts", "sentence pairs")
    return _build(name, kind, rows, labels, [], options, details, what, unit)


# ---------------------------------------------------------------------------------- assembly

def _build(name: str, kind: str, rows: dict[str, list], labels: list[str] | None,
           prompts: list[str], options: SplitOptions, details: dict, what: str,
           unit: str) -> TrainData:
    """The TrainData: datasets, fingerprint, one-line description and the details."""
    columns = {side: _columns([row for _, row in rows[side]]) for side in _SIDES}
    digest = hashlib.sha256(json.dumps({"kind": kind, "labels": labels}).encode())
    evaluated = digest.copy()  # what was evaluated, alone: runs of one study must agree on it
    for side in _SIDES:
        _digest_split(digest, side, columns[side])
    _digest_split(evaluated, "eval", columns["eval"])
    details["eval_fingerprint"] = evaluated.hexdigest()
    units = {side: len({key for key, _ in rows[side]}) for side in _SIDES}
    counts = {side: len(rows[side]) for side in _SIDES}
    source = (f" from {units['train']} / {units['eval']} {unit}"
              if not details["split"].startswith("by position") else " (one document)")
    details.update(kind=kind, task=options.task, max_seq_len=options.max_seq_len,
                   max_samples=options.max_samples, eval_fraction=options.eval_fraction,
                   seed=options.seed, eval_seed=options.eval_seed,
                   train_examples=counts["train"],
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


def _digest_split(digest: Any, side: str, columns: dict[str, list]) -> None:
    """Add one split's ``columns`` to the hash ``digest``."""
    for column, values in columns.items():
        digest.update(f"\n#{side}.{column}\n".encode())
        for value in values:
            digest.update(_canonical(value) + b"\n")


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
