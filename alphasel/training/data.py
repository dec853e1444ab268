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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from alphasel.errors import DataError, TrainConfigError
from alphasel.training.config import HEAD_TASKS, TASKS, TEMPLATES, TrainConfig
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


@dataclass(frozen=True)
class Columns:
    """Where a data set's examples are: its config and splits (hub data sets and data set
    directories) and the text and label columns of labelled (classification, regression)
    records."""

    config: str | None = None
    """The data set's config (``glue:cola`` → cola); None: its default."""
    train_split: str = "train"
    eval_split: str | None = None
    """A split to evaluate on; None: a held-out share of the train split."""
    text: tuple[str, ...] = ("text",)
    """One text column, or two for sentence pairs."""
    label: str = "label"

    @property
    def default_source(self) -> bool:
        """Whether nothing beyond a data set's default config and train split is asked for."""
        return self.config is None and self.train_split == "train" and self.eval_split is None


def load_data(spec: str, tokenizer, *, task: str = "causal", template: str = "alpaca",
              max_seq_len: int = 512, max_samples: int | None = None,
              eval_fraction: float = 0.1, seed: int = 0, eval_seed: int = 0,
              train_split: str = "train", eval_split: str | None = None,
              text_column: list[str] | tuple[str, ...] = (),
              label_column: str = "label") -> TrainData:
    """Load `spec` (built-in name, file, directory or hub id) as tokenized train/eval splits.

    What `spec` is, in this order: a name in BUILTIN; an existing directory — a data set for
    `datasets.load_dataset` when it holds only data files (.json/.jsonl/.csv/.parquet/.arrow)
    and READMEs (a hub data set's layout: a folder of files per config and split, configs in
    README.md), else a corpus of text files; an existing .json/.jsonl/.csv file (records:
    Alpaca `instruction`/`input`/`output`, `text`, or a text and a label column with task
    classification or regression); any other existing file (plain text); `name` or
    `org/name` (a hub dataset id, through the Hugging Face cache). ``NAME:CONFIG`` names a data
    set's config (``glue:cola``, ``nyu-mll/glue:mrpc``; ``glue`` is ``nyu-mll/glue``).

    `task` is `causal`, `classification` or `regression`; `template` (`alpaca` or `chat`)
    formats instruction data; `max_samples` caps the train split (and the eval split in
    proportion), None keeps everything. `seed` orders the train side, `eval_seed` the eval
    side: runs with other seeds but one eval seed evaluate on the same examples.
    `train_split`/`eval_split` name a data set's splits (no eval split: `eval_fraction` of the
    train split is held out); `text_column` (one, or two for sentence pairs) and
    `label_column` name labelled data's columns, whose class names come from the data set's
    features. Raises DataError, naming the input and the fix, for anything that cannot be used.
    """
    options = _check_options(tokenizer, task, template, max_seq_len, max_samples,
                             eval_fraction, seed, eval_seed)
    spec = str(spec)
    target, config = _named_config(spec)
    columns = Columns(config, train_split, eval_split, tuple(text_column) or ("text",),
                      label_column)
    if target in BUILTIN or Path(target).expanduser().is_file() or (
            Path(target).expanduser().is_dir() and not _is_dataset_dir(Path(target))):
        if not columns.default_source:
            raise DataError(f"'{spec}' has no configs or splits of its own: --data NAME:CONFIG, "
                            "--train-split and --eval-split name a hub data set's or a data "
                            "set directory's")
    if target in BUILTIN:
        return load_builtin(target, options)
    if target.startswith("stdlib-"):
        raise DataError(f"unknown built-in data set '{spec}': use one of {', '.join(BUILTIN)}, "
                        "a file, a directory or a hub dataset id")
    path = Path(target).expanduser()
    if path.is_dir():
        if _is_dataset_dir(path):
            return _from_dataset(spec, path, columns, options)
        return _from_text_files(spec, path, options)
    if path.is_file():
        if path.suffix.lower() in RECORD_SUFFIXES:
            return _from_records(spec, _file_records(path), options, "records", columns)
        return _from_text_files(spec, path, options)
    if _HUB_ID.match(target) and not target.lower().endswith(RECORD_SUFFIXES + (".txt", ".md")):
        return _from_dataset(spec, target, columns, options)
    raise DataError(f"'{spec}' does not exist: pass an existing file or directory, one of the "
                    f"built-in sets ({', '.join(BUILTIN)}) or a hub dataset id like org/name")


#: Short names of hub data sets: ``glue:cola`` is ``nyu-mll/glue``'s config cola.
HUB_ALIASES = {"glue": "nyu-mll/glue"}


def _named_config(spec: str) -> tuple[str, str | None]:
    """(data set, config) of ``NAME:CONFIG`` (an existing path is never split: it may hold a
    colon); an alias of :data:`HUB_ALIASES` becomes its hub id."""
    if ":" not in spec or Path(spec).expanduser().exists():
        return HUB_ALIASES.get(spec, spec), None
    name, _, config = spec.rpartition(":")
    if not config:
        raise DataError(f"--data {spec}: name the config after the colon (e.g. glue:cola)")
    return HUB_ALIASES.get(name, name), config


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
                         eval_seed=config.eval_seed, train_split=config.train_split,
                         eval_split=config.eval_split, text_column=config.text_column,
                         label_column=config.label_column)
    kind = data.kind if data.kind in HEAD_TASKS else "causal"
    if kind != config.task:
        raise TrainConfigError(f"data '{data.name}' is {data.kind} data but --task is "
                               f"{config.task}: use --task {kind}")
    return tokenizer, data


def _check_options(tokenizer, task, template, max_seq_len, max_samples, eval_fraction,
                   seed, eval_seed) -> SplitOptions:
    problems = []
    if task not in TASKS:
        problems.append(f"--task {task!r} is unknown: use one of {', '.join(TASKS)}")
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


def _load_dataset(spec: str, target: str | Path, config: str | None) -> datasets.DatasetDict:
    """Every split of ``target``'s ``config``, through `datasets.load_dataset` (which honours
    HF_HOME and the offline flags); a hub id `datasets` cannot reach (offline) is read from the
    Hugging Face hub cache's snapshot of it, when there is one. A config the data set lacks is
    named with those it has."""
    try:
        return datasets.load_dataset(str(target), config)
    except (ConnectionError, FileNotFoundError) as error:
        snapshot = None if isinstance(target, Path) else _cached_snapshot(str(target))
        if snapshot is None:
            return _unreadable(spec, target, config, error)
        try:
            return datasets.load_dataset(str(snapshot), config)
        except (OSError, datasets.exceptions.DatasetsError, ValueError) as inner:
            return _unreadable(spec, snapshot, config, inner)
    except (OSError, datasets.exceptions.DatasetsError, ValueError) as error:
        return _unreadable(spec, target, config, error)


def _cached_snapshot(repo: str) -> Path | None:
    """The hub cache's local snapshot of data set ``repo`` (huggingface_hub's own lookup,
    without the network), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache, in whatever way the hub says it
        return None


def _unreadable(spec: str, target: str | Path, config: str | None, error: Exception) -> Any:
    """Raise the DataError that says why ``target`` could not be read and what to do: a config
    it lacks (naming those it has), a data set of several configs named without one, broken
    files, or a hub id neither reachable nor in the cache."""
    reason = " ".join(str(error).split())
    configs = _config_names(target)
    if config is not None and configs and config not in configs:
        raise DataError(f"'{spec}': the data set has no config '{config}' (it has: "
                        f"{', '.join(configs)}): name one of those after the colon"
                        ) from error
    if config is None and len(configs) > 1 and "config" in reason.lower():
        raise DataError(f"'{spec}' has several configs ({', '.join(configs)}): name one, "
                        f"as {spec}:{configs[0]}") from error
    # Not found, can't reach the hub, offline: these say the id is not in the cache.
    if Path(target).exists() or not isinstance(error, ConnectionError | FileNotFoundError):
        raise DataError(f"'{target}' cannot be read by datasets.load_dataset ({reason}): "
                        "fix its data files, or pass one JSON/JSONL/CSV file directly"
                        ) from error
    raise DataError(f"'{spec}' is neither a local file or directory nor a data set in the "
                    f"Hugging Face cache ({type(error).__name__}: {reason}): download it "
                    f"where there is network (datasets.load_dataset('{target}'"
                    + (f", '{config}'" if config else "") + "), point HF_HOME at a cache "
                    "that has it, or pass a local file") from error


def _config_names(target: str | Path) -> list[str]:
    """The data set's configs as `datasets` lists them (from the cache when offline); none
    when it cannot tell."""
    try:
        return list(datasets.get_dataset_config_names(str(target)))
    except Exception:  # noqa: BLE001 - any failure means: unknown, say nothing about configs
        return []


def _split_rows(spec: str, dataset: datasets.DatasetDict, split: str,
                flag: str) -> tuple[list[tuple[str, dict]], datasets.Features]:
    """(records with where each comes from, features) of one split, named by ``flag``'s value;
    a split the data set lacks is named with those it has."""
    if split not in dataset:
        raise DataError(f"'{spec}' has no split '{split}' (it has: {', '.join(dataset)}): "
                        f"choose one with {flag}")
    rows = [(f"'{spec}', {split} row {number}", record)
            for number, record in enumerate(dataset[split].to_list(), 1)]
    if not rows:
        raise DataError(f"'{spec}' has an empty {split} split: choose another with {flag}")
    return rows, dataset[split].features


def _from_dataset(spec: str, target: str | Path, columns: Columns,
                  options: SplitOptions) -> TrainData:
    """A hub data set or a data set directory: its train split, and its eval split when one is
    named (else a held-out share of the train split); class names from its features."""
    dataset = _load_dataset(spec, target, columns.config)
    train, features = _split_rows(spec, dataset, columns.train_split, "--train-split")
    evaluated = (_split_rows(spec, dataset, columns.eval_split, "--eval-split")[0]
                 if columns.eval_split else None)
    label = features.get(columns.label)
    names = list(label.names) if isinstance(label, datasets.ClassLabel) else None
    return _from_records(spec, (str(spec), train, names), options, "records", columns,
                         evaluated)


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
                  options: SplitOptions, unit: str, columns: Columns = Columns(),
                  evaluated: list[tuple[str, dict]] | None = None) -> TrainData:
    """Record-based data (files or `load_dataset`), split by record content (identical records
    always land on the same side), or with ``evaluated`` records (a data set's eval split) on
    the eval side and every loaded one on the train side."""
    source, records, class_names = loaded
    fields = list(records[0][1])
    details: dict = {"source": source, "records_found": len(records), "split": "by record"}
    if evaluated is not None:
        details.update(split="by the data set's splits", train_split=columns.train_split,
                       eval_split=columns.eval_split)
    if columns.config is not None:
        details["config"] = columns.config
    if options.task in HEAD_TASKS:
        return _labelled(name, source, records, evaluated, class_names, columns, options, unit,
                         details)
    trained = len(records)  # the records before the eval split's
    if evaluated is not None:  # a language model's eval split: its records on the eval side
        records = records + evaluated
    if "instruction" in fields or "output" in fields:  # Alpaca; a record lacking one is named
        triples = [(_text_field(where, record, "instruction"),
                    _text_field(where, record, "input", required=False),
                    _text_field(where, record, "output")) for where, record in records]
        if evaluated is None:
            contents = [f"{instruction}\0{context}" for instruction, context, _ in triples]
            content_sides = assign_sides(sorted(set(contents)), options.eval_fraction)
            _need_two(source, len(content_sides))
            sides = {index: content_sides[content] for index, content in enumerate(contents)}
        else:
            sides = {index: "train" if index < trained else "eval"
                     for index in range(len(triples))}
        return instruction_data(name, list(range(len(triples))), sides,
                                lambda index: [triples[index]], options, unit, details)
    if "text" in fields:
        texts = [_text_field(where, record, "text") for where, record in records]
        given = None
        if evaluated is not None:  # a text in both splits is evaluated, never trained on
            given = {text: "train" for text in texts[:trained]}
            given.update((text, "eval") for text in texts[trained:])
        return text_data(name, list(dict.fromkeys(texts)), lambda text: text, options, unit,
                         details, sides=given)
    raise DataError(f"'{source}' has neither 'instruction' and 'output' (Alpaca) nor 'text' "
                    f"fields (it has: {', '.join(map(str, fields))}): rename them")


def _need_two(source: str, distinct: int) -> None:
    if distinct < 2:
        raise DataError(f"'{source}' has {distinct} distinct record(s): at least 2 are needed "
                        "to split it into train and eval")


def _labelled(name: str, source: str, records: list[tuple[str, dict]],
              evaluated: list[tuple[str, dict]] | None, class_names: list[str] | None,
              columns: Columns, options: SplitOptions, unit: str, details: dict) -> TrainData:
    """Classification or regression data from records: the text column (two for sentence
    pairs) and the label column, checked on every record; split by text (identical texts on
    one side) unless ``evaluated`` records are the eval side."""
    fields = list(records[0][1])
    lacking = [column for column in (*columns.text, columns.label) if column not in fields]
    if lacking:
        raise DataError(f"'{source}' has no column(s) {', '.join(lacking)} (it has: "
                        f"{', '.join(map(str, fields))}): name its text with --text-column "
                        "(two for sentence pairs) and its label with --label-column")
    regression = options.task == "regression"
    if regression and class_names:
        raise DataError(f"'{source}': --task regression needs numbers, but '{columns.label}' "
                        f"holds classes ({', '.join(class_names[:5])}): use --task "
                        "classification")
    examples = {"train": _examples(records, columns, regression),
                "eval": _examples(evaluated, columns, regression) if evaluated else []}
    labels = None
    if not regression:
        found = [label for side in examples.values() for *_, label in side]
        labels = class_names or label_names(found)
        outside = sorted({label for label in found if class_names and not (
            isinstance(label, int) and 0 <= label < len(class_names))}, key=str)
        if outside:
            raise DataError(f"'{source}': labels {outside[:5]} are not ids of its classes "
                            f"0-{len(class_names) - 1} ({', '.join(class_names[:5])}): a split "
                            "without labels (GLUE's test) cannot be evaluated; name one with "
                            "labels (--eval-split validation)")
        if len({str(label) for label in found}) < 2:
            raise DataError(f"'{source}' has only the label(s) {sorted(map(str, set(found)))}: "
                            "classification needs at least 2 classes")
    if evaluated is None:
        sides = assign_sides(sorted({f"{text}\0{pair}" for text, pair, _ in examples["train"]}),
                             options.eval_fraction)
        _need_two(source, len(sides))
        placed = [(sides[f"{text}\0{pair}"], text, pair, label)
                  for text, pair, label in examples["train"]]
    else:
        placed = [(side, *example) for side in ("train", "eval") for example in examples[side]]
    rows: dict[str, list] = {"train": [], "eval": []}
    for side, text, pair, label in placed:
        value = label if regression or class_names else labels.index(str(label))
        row = {"text": text, "label": value, **({"pair": pair} if pair is not None else {})}
        rows[side].append((f"{text}\0{pair}", row))
    details.update(text_columns=list(columns.text), label_column=columns.label)
    return classification_data(name, rows, labels, options, unit, details,
                               kind=options.task)


def _examples(records: list[tuple[str, dict]], columns: Columns,
              regression: bool) -> list[tuple[str, str | None, Any]]:
    """(text, pair text or None, label) of each record; a label that is not a class name or id
    (classification) or not a number (regression) is named with its record."""
    found = []
    for where, record in records:
        text = _text_field(where, record, columns.text[0])
        pair = _text_field(where, record, columns.text[1]) if len(columns.text) > 1 else None
        label = record.get(columns.label)
        if regression:
            if isinstance(label, bool) or not isinstance(label, int | float) or label != label:
                raise DataError(f"{where}: --task regression needs a number in "
                                f"'{columns.label}', not {label!r}: use --task classification "
                                "for class labels")
            label = float(label)
        elif isinstance(label, bool) or not isinstance(label, str | int) or label == "":
            raise DataError(f"{where}: the label {label!r} is not a class name or id: use a "
                            "string or an integer")
        found.append((text, pair, label))
    return found
