"""Training data → tokenized train/eval splits: the entry is `load_data(spec, tokenizer, ...)`.

Sources: the built-in offline sets (`BUILTIN`, from the installed standard library), Alpaca
JSON/JSONL files, CSV/JSONL classification files, plain text or code files and directories,
local data set directories and Hugging Face hub ids (through `datasets.load_dataset`, which
honours the HF cache and offline switches itself).

This module reads the sources and hands their units (files or records) to
`alphasel.training.splits`, which splits them by a stable hash of each unit, so eval text is never
trained on whatever the seed and `max_samples` are, and tokenizes and formats the rows.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from pathlib import Path
from typing import Any

import datasets

from alphasel.errors import DataError, TrainConfigError
from alphasel.training.config import TASKS, TEMPLATES, TrainConfig
from alphasel.training.splits import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_NO_INPUT,
    MIN_CHUNK,
    SplitOptions,
    TrainData,
    alpaca_prompt,
    assign_sides,
    classification_data,
    instruction_data,
    label_names,
    text_data,
)
from alphasel.training.stdlib_data import load_builtin

__all__ = ["ALPACA_PROMPT", "ALPACA_PROMPT_NO_INPUT", "BUILTIN", "TrainData", "alpaca_prompt",
           "load_data"]

#: Built-in data set name → one-line description; built from the installed standard library
#: by `alphasel.training.stdlib_data`, so they work offline.
BUILTIN = {
    "stdlib-code": "Python standard library source files as plain code for causal LM (kind text)",
    "stdlib-instruct": "stdlib functions and methods: signature + docstring → source "
                       "(kind instruction)",
    "stdlib-topics": "stdlib docstrings labelled with the package they come from "
                     "(kind classification)",
}

#: Files read as records (Alpaca, classification) rather than as plain text.
RECORD_SUFFIXES = (".json", ".jsonl", ".csv")
#: A directory holding only files like these (and READMEs) is a data set for `load_dataset`.
DATASET_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def load_data(spec: str, tokenizer, *, task: str = "causal", template: str = "alpaca",
              max_seq_len: int = 512, max_samples: int | None = None,
              eval_fraction: float = 0.1, seed: int = 0, eval_seed: int = 0) -> TrainData:
    """Load `spec` (built-in name, file, directory or hub id) as tokenized train/eval splits.

    What `spec` is, in this order: a name in BUILTIN; an existing directory — a data set for
    `datasets.load_dataset` when it holds only data files (.json/.jsonl/.csv/.parquet/.arrow)
    and READMEs, else a corpus of text files; an existing .json/.jsonl/.csv file (records:
    Alpaca `instruction`/`input`/`output`, `text`, or `text`/`label` with task classification);
    any other existing file (plain text); `name` or `org/name` (a hub dataset id).

    `task` is `causal` or `classification`; `template` (`alpaca` or `chat`) formats
    instruction data; `max_samples` caps the train split (and the eval split in proportion),
    None keeps everything. `seed` orders the train side, `eval_seed` the eval side: runs with
    other seeds but one eval seed evaluate on the same examples. Raises DataError, naming the
    input and the fix, for anything that cannot be used.
    """
    options = _check_options(tokenizer, task, template, max_seq_len, max_samples,
                             eval_fraction, seed, eval_seed)
    spec = str(spec)
    if spec in BUILTIN:
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


def tokenizer_and_data(model: Any, tokenizer: Any, data: str | TrainData, config: TrainConfig,
                       revision: str | None = None) -> tuple[Any, TrainData]:
    """A run's tokenizer (``model``'s own unless given), then its data tokenized by it (the
    data's labels size a classifier's head), checked against ``config.task``."""
    import torch

    from alphasel.training.models import load_tokenizer

    if tokenizer is None and not isinstance(model, torch.nn.Module):
        tokenizer = load_tokenizer(str(model), revision=revision)
    if tokenizer is None:
        raise TrainConfigError("an in-memory model needs its tokenizer: pass tokenizer=...")
    if not isinstance(data, TrainData):
        data = load_data(data, tokenizer, task=config.task, template=config.template,
                         max_seq_len=config.max_seq_len, max_samples=config.max_samples,
                         eval_fraction=config.eval_fraction, seed=config.seed,
                         eval_seed=config.eval_seed)
    if (data.kind == "classification") != (config.task == "classification"):
        raise TrainConfigError(f"data '{data.name}' is {data.kind} data but --task is "
                               f"{config.task}: use --task "
                               f"{'classification' if data.kind == 'classification' else 'causal'}")
    return tokenizer, data


def _check_options(tokenizer, task, template, max_seq_len, max_samples, eval_fraction,
                   seed, eval_seed) -> SplitOptions:
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
    return SplitOptions(tokenizer, task, template, max_seq_len, max_samples, float(eval_fraction),
                        int(seed), int(eval_seed))


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


def _from_text_files(name: str, path: Path, options: SplitOptions) -> TrainData:
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
    return text_data(name, sorted(files), lambda key: _read_text(files[key]), options, "files",
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
                  options: SplitOptions, unit: str) -> TrainData:
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
        labels = class_names or label_names([label for _, label in pairs])
        if len({str(label) for _, label in pairs}) < 2:
            raise DataError(f"'{source}' has only the label(s) "
                            f"{sorted({str(label) for _, label in pairs})}: classification "
                            "needs at least 2 classes")
        sides = assign_sides(sorted({text for text, _ in pairs}), options.eval_fraction)
        _need_two(source, len(sides))
        rows: dict[str, list] = {"train": [], "eval": []}
        for text, label in pairs:
            label_id = label if class_names else labels.index(str(label))
            rows[sides[text]].append((text, {"text": text, "label": label_id}))
        return classification_data(name, rows, labels, options, unit, details)
    if "instruction" in fields or "output" in fields:  # Alpaca; a record lacking one is named
        triples = [(_text_field(where, record, "instruction"),
                    _text_field(where, record, "input", required=False),
                    _text_field(where, record, "output")) for where, record in records]
        contents = [f"{instruction}\0{context}" for instruction, context, _ in triples]
        content_sides = assign_sides(sorted(set(contents)), options.eval_fraction)
        _need_two(source, len(content_sides))
        sides = {index: content_sides[content] for index, content in enumerate(contents)}
        return instruction_data(name, list(range(len(triples))), sides,
                                lambda index: [triples[index]], options, unit, details)
    if "text" in fields:
        texts = list(dict.fromkeys(_text_field(where, record, "text")
                                   for where, record in records))
        return text_data(name, texts, lambda text: text, options, unit, details)
    raise DataError(f"'{source}' has neither 'instruction' and 'output' (Alpaca) nor 'text' "
                    f"fields (it has: {', '.join(map(str, fields))}): rename them")


def _need_two(source: str, distinct: int) -> None:
    if distinct < 2:
        raise DataError(f"'{source}' has {distinct} distinct record(s): at least 2 are needed "
                        "to split it into train and eval")
