"""Training data → splits: built-in stdlib sets, Alpaca/JSONL/CSV/text files, local and hub
data sets, and every DataError. Offline, with the byte-level test tokenizer (one token a byte)."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub
import pytest
from helpers import byte_tokenizer

from alphasel.errors import DataError
from alphasel.training import stdlib_data
from alphasel.training.data import BUILTIN, alpaca_prompt, load_data
from alphasel.training.splits import NUM_PROMPTS

EOS = 1  # the byte tokenizer's <eos>


@pytest.fixture(scope="module")
def code(tokenizer):
    return load_data("stdlib-code", tokenizer, max_samples=60, max_seq_len=128)


@pytest.fixture(scope="module")
def instruct(tokenizer):
    return load_data("stdlib-instruct", tokenizer, max_samples=40, max_seq_len=1024)


@pytest.fixture(scope="module")
def topics(tokenizer):
    return load_data("stdlib-topics", tokenizer, task="classification", max_samples=80,
                     max_seq_len=128)


def texts_of(tokenizer, split) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in split["input_ids"]]


def hash_value(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def alpaca_records(count: int = 20) -> list[dict]:
    """Half with an input, half without; each instruction distinct."""
    return [{"instruction": f"Task {i}: say the number", "input": f"n={i}" if i % 2 else "",
             "output": f"The number is {i}."} for i in range(count)]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


# ------------------------------------------------------------------------------- built-in sets

def test_builtin_names_are_listed():
    assert set(BUILTIN) == {"stdlib-code", "stdlib-instruct", "stdlib-topics"}
    assert all(isinstance(text, str) and text for text in BUILTIN.values())


def test_stdlib_code_chunks_cap_and_eos(code):
    assert code.kind == "text" and code.labels is None
    assert code.train.column_names == ["input_ids"] == code.eval.column_names
    assert len(code.train) == 60 and len(code.eval) == math.ceil(60 * 0.1 / 0.9)
    chunks = list(code.train["input_ids"]) + list(code.eval["input_ids"])
    assert all(8 <= len(ids) <= 128 for ids in chunks)
    # EOS closes a document, and a chunk never spans two: it can only be a chunk's last token.
    assert all(EOS not in ids[:-1] for ids in chunks)
    assert any(ids[-1] == EOS for ids in chunks)
    assert len(code.prompts) == NUM_PROMPTS
    assert code.description.startswith("stdlib-code: 60 train / 7 eval chunks of ≤128 tokens")
    json.dumps(code.details)  # the run record stores it


def test_stdlib_code_splits_by_file_without_leaks(code, tokenizer):
    root = stdlib_data.stdlib_root()
    eval_files = code.details["eval_files"]
    assert eval_files and all(hash_value(name) < 0.1 for name in eval_files)
    eval_text = [(root / name).read_text() for name in eval_files]
    train_chunks, eval_chunks = texts_of(tokenizer, code.train), texts_of(tokenizer, code.eval)
    assert not set(eval_chunks) & set(train_chunks)
    clean = [chunk for chunk in eval_chunks if "\ufffd" not in chunk]  # cut multi-byte chars
    assert clean and all(any(chunk in text for text in eval_text) for chunk in clean)
    assert not any(chunk in text for chunk in train_chunks if "\ufffd" not in chunk
                   for text in eval_text)


def test_stdlib_code_prompts_are_function_heads_from_eval_files(code):
    root = stdlib_data.stdlib_root()
    files = code.details["prompt_files"]
    assert len(files) == len(code.prompts) == NUM_PROMPTS == len(set(files))
    # Held-out files only: the eval split's first (in its order), then other eval-side files.
    assert all(hash_value(name) < 0.1 for name in files)
    with_head = [name for name in code.details["eval_files"]
                 if stdlib_data.function_head(*stdlib_data.read_module(name, root))]
    assert with_head and set(files[:len(with_head)]) == set(with_head)
    for name, prompt in zip(files, code.prompts, strict=True):
        assert prompt.startswith(("def ", "async def ")) and prompt in (root / name).read_text()
        # def line(s) and docstring, then the body's indentation: `pass` completes a function.
        function = ast.parse(prompt + "pass\n").body[0]
        assert isinstance(function.body[0].value, ast.Constant) and len(function.body) == 2
        assert len(ast.get_docstring(function)) >= stdlib_data.MIN_DOCSTRING
        assert ast.get_docstring(function).splitlines()[0].strip() in prompt
        assert prompt.endswith("\n" + " " * function.body[1].col_offset)


def test_function_head_takes_the_first_fit_function():
    source = (
        "@cache\n"
        "def short(x):\n    \"\"\"Too short.\"\"\"\n    a = 1\n    b = 2\n    return a\n"
        "def tiny(x):\n    \"\"\"A docstring that is long enough.\"\"\"\n    return x\n"
        "def spaced(x):\n    \"\"\"A docstring that is long enough.\"\"\"\n\n    a = 1\n"
        "    b = 2\n    return a\n"
        "class Thing:\n    def method(self):\n        \"\"\"A method that would qualify.\"\"\"\n"
        "        a = 1\n        b = 2\n        return a\n"
        "async def fetch(url,\n                timeout=3):\n"
        "    \"\"\"Fetch ‘url’ — its bytes,\n    or None — never ‘raise’.\"\"\"\n"
        "    a = 1\n    b = 2\n    return a\n")
    head = stdlib_data.function_head(source, ast.parse(source))
    # Not a short docstring, a short body, a blank line before the body or a method; the
    # closing line's non-ASCII text is cut by characters, not by ast's byte columns.
    assert head == ("async def fetch(url,\n                timeout=3):\n"
                    "    \"\"\"Fetch ‘url’ — its bytes,\n    or None — never ‘raise’.\"\"\"\n    ")
    assert stdlib_data.function_head("x = 1\n", ast.parse("x = 1\n")) is None


def test_builtin_is_deterministic_and_the_seed_orders(code, tokenizer):
    again = load_data("stdlib-code", tokenizer, max_samples=60, max_seq_len=128)
    assert again.fingerprint == code.fingerprint and again.prompts == code.prompts
    assert list(again.train["input_ids"]) == list(code.train["input_ids"])
    other = load_data("stdlib-code", tokenizer, max_samples=60, max_seq_len=128, seed=1)
    assert other.fingerprint != code.fingerprint
    assert list(other.train["input_ids"]) != list(code.train["input_ids"])
    # The seed picks and orders the files, never which side a file is on.
    assert all(hash_value(name) < 0.1 for name in other.details["eval_files"])


def test_stdlib_instruct_pairs_signature_and_docstring_with_source(instruct):
    assert instruct.kind == "instruction"
    assert instruct.train.column_names == ["prompt", "completion"]
    assert len(instruct.train) == 40 and len(instruct.eval) == 5
    for row in list(instruct.train) + list(instruct.eval):
        assert row["prompt"].startswith("Below is an instruction that describes a task. Write")
        assert "Write the Python " in row["prompt"] and "Its docstring:\n" in row["prompt"]
        assert row["prompt"].endswith("### Response:\n")
        tree = ast.parse(row["completion"])  # dedented source that parses on its own
        function = tree.body[0]
        assert isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        assert f"{function.name}(" in row["prompt"]
        assert ast.get_docstring(function) in row["prompt"]
        assert 3 <= len(row["completion"].splitlines()) <= 60
    assert not set(list(instruct.eval["completion"])) & set(list(instruct.train["completion"]))
    # Split by file: a module's examples all sit on one side.
    eval_modules = {stdlib_data.module_name(name) for name in instruct.details["eval_files"]}

    def module(prompt: str) -> str:
        return prompt.split("from the module `")[1].split("`")[0]

    assert {module(prompt) for prompt in list(instruct.eval["prompt"])} <= eval_modules
    assert not {module(prompt) for prompt in list(instruct.train["prompt"])} & eval_modules
    # Generation prompts: raw instructions from the eval split (the trainer templates them).
    assert 3 <= len(instruct.prompts) <= 5
    assert all(any(prompt in row for row in list(instruct.eval["prompt"]))
               for prompt in instruct.prompts)
    assert all(prompt.startswith("Write the Python ") for prompt in instruct.prompts)


def test_stdlib_instruct_chat_template(tokenizer):
    data = load_data("stdlib-instruct", tokenizer, template="chat", max_samples=5,
                     max_seq_len=1024)
    row = data.train[0]
    assert row["prompt"][0]["role"] == "user" and len(row["prompt"]) == 1
    assert row["prompt"][0]["content"].startswith("Write the Python ")
    assert row["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}]
    ast.parse(row["completion"][0]["content"])


def test_stdlib_topics_balanced_classes_split_by_file(topics, tokenizer):
    assert topics.kind == "classification" and topics.prompts == []
    assert topics.train.column_names == ["input_ids", "attention_mask", "labels"]
    assert len(topics.labels) >= 5 and topics.labels == sorted(topics.labels)
    assert set(topics.labels) <= set(stdlib_data.TOPIC_PACKAGES)
    counts = Counter(list(topics.train["labels"]))
    assert len(counts) == len(topics.labels) and len(set(counts.values())) == 1
    assert len(topics.train) == 80 // len(topics.labels) * len(topics.labels)
    assert all(len(ids) <= 128 for ids in list(topics.train["input_ids"]))
    assert not set(texts_of(tokenizer, topics.eval)) & set(texts_of(tokenizer, topics.train))
    # The capped eval split takes the classes in turn: each class is evaluated.
    assert len(topics.eval) == 9 and set(topics.eval["labels"]) == set(range(len(topics.labels)))
    eval_topics = {stdlib_data.topic_of(name) for name in topics.details["eval_files"]}
    assert eval_topics == set(topics.labels)


def test_stdlib_topics_uncapped_has_plenty_per_class(tokenizer):
    data = load_data("stdlib-topics", tokenizer, task="classification", max_seq_len=64)
    assert data.details["train_per_class"] >= 50
    assert set(data.details["eval_class_counts"]) == set(data.labels)


@pytest.mark.parametrize(("name", "task", "fix"), [
    ("stdlib-topics", "causal", "add --task classification"),
    ("stdlib-code", "classification", "use --task causal"),
    ("stdlib-instruct", "classification", "use --task causal"),
])
def test_builtin_with_the_wrong_task(tokenizer, name, task, fix):
    with pytest.raises(DataError, match=f"^{name} is .*: {fix}$"):
        load_data(name, tokenizer, task=task)


def test_unknown_builtin_lists_the_builtins(tokenizer):
    with pytest.raises(DataError) as caught:
        load_data("stdlib-foo", tokenizer)
    assert str(caught.value) == ("unknown built-in data set 'stdlib-foo': use one of stdlib-code, "
                                 "stdlib-instruct, stdlib-topics, a file, a directory or a hub "
                                 "dataset id")


# --------------------------------------------------------------------------- Alpaca JSON/JSONL

@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_alpaca_file_with_and_without_input(tmp_path, tokenizer, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(alpaca_records(), indent=1))
    else:
        write_jsonl(path, alpaca_records())
    data = load_data(str(path), tokenizer, max_seq_len=512)
    assert data.kind == "instruction" and data.details["split"] == "by record"
    assert len(data.train) + len(data.eval) == 20 and len(data.eval) >= 1
    rows = {row["completion"]: row["prompt"] for row in list(data.train) + list(data.eval)}
    assert rows["The number is 3."] == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nTask 3: say the number\n\n### Input:\nn=3\n\n### Response:\n")
    assert rows["The number is 4."] == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nTask 4: say the number\n\n### Response:\n")
    assert alpaca_prompt("Task 4: say the number") == rows["The number is 4."]
    # Split by record content: the hash rule decides, not the seed.
    for row in data.eval:
        number = int(row["completion"].split()[-1].rstrip("."))
        record = alpaca_records()[number]
        assert hash_value(f"{record['instruction']}\0{record['input']}") < 0.1
    assert data.prompts and all(prompt.startswith("Task ") for prompt in data.prompts)


def test_alpaca_chat_template_gives_conversations(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "data.jsonl", alpaca_records())
    data = load_data(str(path), tokenizer, template="chat")
    rows = {row["completion"][0]["content"]: row for row in list(data.train) + list(data.eval)}
    assert rows["The number is 3."]["prompt"] == [
        {"role": "user", "content": "Task 3: say the number\n\nn=3"}]
    assert rows["The number is 4."]["prompt"] == [
        {"role": "user", "content": "Task 4: say the number"}]
    assert rows["The number is 4."]["completion"] == [
        {"role": "assistant", "content": "The number is 4."}]
    assert data.details["template"] == "chat"


def test_chat_template_needs_one(tmp_path):
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = None
    path = write_jsonl(tmp_path / "data.jsonl", alpaca_records())
    with pytest.raises(DataError, match="^the tokenizer has no chat template: use --template "
                                        "alpaca$"):
        load_data(str(path), tokenizer, template="chat")


def test_identical_records_land_on_the_same_side(tmp_path, tokenizer):
    records = alpaca_records(40) + alpaca_records(40)
    data = load_data(str(write_jsonl(tmp_path / "data.jsonl", records)), tokenizer)
    # A duplicate of an eval record would be dropped from train as a leak; none is, and every
    # copy is kept.
    assert data.details["train_duplicates_dropped"] == 0
    assert len(data.train) + len(data.eval) == 80
    assert not set(list(data.eval["prompt"])) & set(list(data.train["prompt"]))


def test_max_samples_caps_records_and_the_seed_orders(tmp_path, tokenizer):
    path = str(write_jsonl(tmp_path / "data.jsonl", alpaca_records(200)))
    first = load_data(path, tokenizer, max_samples=30, eval_fraction=0.2)
    assert len(first.train) == 30 and len(first.eval) == math.ceil(30 * 0.2 / 0.8)
    assert load_data(path, tokenizer, max_samples=30, eval_fraction=0.2).fingerprint == (
        first.fingerprint)
    everything = load_data(path, tokenizer, eval_fraction=0.2)
    reordered = load_data(path, tokenizer, eval_fraction=0.2, seed=7)
    assert sorted(list(reordered.train["prompt"])) == sorted(list(everything.train["prompt"]))
    assert list(reordered.train["prompt"]) != list(everything.train["prompt"])
    assert reordered.fingerprint != everything.fingerprint
    assert set(list(first.eval["prompt"])) <= set(list(everything.eval["prompt"]))


def test_long_prompts_are_dropped_and_counted(tmp_path, tokenizer):
    records = alpaca_records(30) + [
        {"instruction": f"Long {i} " + "x" * 400, "output": "y"} for i in range(7)]
    data = load_data(str(write_jsonl(tmp_path / "data.jsonl", records)), tokenizer,
                     max_seq_len=300)
    assert data.details["dropped_no_response"] == 7
    assert len(data.train) + len(data.eval) == 30
    prompts = list(data.train["prompt"]) + list(data.eval["prompt"])
    assert not any("Long" in prompt for prompt in prompts)


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_max_seq_len_that_leaves_no_response(tmp_path, tokenizer, template):
    path = write_jsonl(tmp_path / "data.jsonl", alpaca_records())

    def prompt_length(record: dict) -> int:
        if template == "alpaca":
            prompt = alpaca_prompt(record["instruction"], record["input"])
            return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        content = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
        return len(tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                 tokenize=True,
                                                 add_generation_prompt=True)["input_ids"])

    lengths = {"train": [], "eval": []}
    for record in alpaca_records():
        side = "eval" if hash_value(f"{record['instruction']}\0{record['input']}") < 0.1 else (
            "train")
        lengths[side].append(prompt_length(record))
    shortest = min(lengths["train"])  # train is checked first: its shortest prompt to beat
    with pytest.raises(DataError) as caught:
        load_data(str(path), tokenizer, template=template, max_seq_len=20)
    assert str(caught.value) == (
        f"--max-seq-len 20 leaves no response tokens in any example of {path} (train split): "
        f"the shortest prompt is {shortest} tokens; raise --max-seq-len above {shortest}")
    # Just above both splits' shortest prompts, exactly the prompts shorter than that remain.
    limit = max(shortest, min(lengths["eval"])) + 1
    data = load_data(str(path), tokenizer, template=template, max_seq_len=limit)
    assert len(data.train) == sum(length < limit for length in lengths["train"]) >= 1
    assert len(data.eval) == sum(length < limit for length in lengths["eval"]) >= 1
    assert data.details["dropped_no_response"] == sum(
        length >= limit for side in lengths.values() for length in side)


# --------------------------------------------------------------------------------- file errors

@pytest.mark.parametrize(("name", "content", "expected"), [
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n\n{"instruction": oops}\n',
     r"bad\.jsonl', line 3: not valid JSON"),
    ("bad.json", '[\n {"instruction": "a", "output": "b"},\n {"instruction": }\n]',
     r"bad\.json', line 3: not valid JSON"),
    ("missing.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
     r"missing\.jsonl', line 2: the record has no 'output' \(it has: instruction\)"),
    ("first.jsonl", '{"instruction": "a"}\n{"instruction": "c", "output": "d"}\n',
     r"first\.jsonl', line 1: the record has no 'output'"),
    ("missing.json", '[{"instruction": "a", "output": "b"}, {"output": "c"}]',
     r"missing\.json', record 2: the record has no 'instruction'"),
    ("list.jsonl", '{"instruction": "a", "output": "b"}\n[1, 2]\n',
     r"list\.jsonl', line 2: a list, not an object"),
    ("empty.jsonl", "\n  \n", r"empty\.jsonl' is empty"),
    ("none.json", "[]", r"none\.json' holds no records"),
    ("object.json", '{"instruction": "a"}', r"object\.json' holds a JSON dict, not a list"),
    ("fields.jsonl", '{"question": "a", "answer": "b"}\n',
     r"fields\.jsonl' has neither 'instruction' and 'output' .* \(it has: question, answer\)"),
    ("one.jsonl", '{"instruction": "a", "output": "b"}\n' * 3, r"one\.jsonl' has 1 distinct"),
])
def test_bad_record_files(tmp_path, tokenizer, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=expected) as caught:
        load_data(str(path), tokenizer)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_jsonl_named_json_is_read_line_by_line(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "records.json", alpaca_records())
    assert load_data(str(path), tokenizer).details["records_found"] == 20


@pytest.mark.parametrize(("spec", "expected"), [
    ("nowhere/data.jsonl", r"^'nowhere/data\.jsonl' does not exist: pass an existing file"),
    ("./missing-dir/", r"^'\./missing-dir/' does not exist"),
])
def test_missing_paths(tokenizer, spec, expected):
    with pytest.raises(DataError, match=expected):
        load_data(spec, tokenizer)


@pytest.mark.parametrize(("options", "expected"), [
    ({"eval_fraction": 0.6}, r"--eval-fraction 0\.6 is out of range: use a value in \(0, 0\.5\]"),
    ({"eval_fraction": 0.0}, r"--eval-fraction 0\.0 is out of range"),
    ({"max_seq_len": 4}, r"--max-seq-len 4 is too short: use at least 8"),
    ({"max_samples": 0}, r"--max-samples 0 is not a positive integer"),
    ({"task": "ranking"},
     r"--task 'ranking' is unknown: use one of causal, classification, regression"),
    ({"template": "vicuna"}, r"--template 'vicuna' is unknown: use alpaca or chat"),
])
def test_bad_options(tokenizer, options, expected):
    with pytest.raises(DataError, match=expected):
        load_data("stdlib-code", tokenizer, **options)


# ------------------------------------------------------------------------ text files and dirs

def test_text_directory_chunks_exactly_and_splits_by_file(tmp_path, tokenizer):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("A" * 300)  # 301 ids → 128 + 128 + 45
    (folder / "sub" / "b.py").write_text("B" * 259)  # 260 ids → 128 + 128 (+ 4, dropped)
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "c.txt").write_text("C" * 100)
    (folder / "blob.bin").write_bytes(b"\0\1\2" * 50)
    data = load_data(str(folder), tokenizer, max_seq_len=128)
    assert data.kind == "text" and data.details["split"] == "by file"
    chunks = list(data.train["input_ids"]) + list(data.eval["input_ids"])
    assert sorted(len(ids) for ids in chunks) == [45, 128, 128, 128, 128]
    texts = texts_of(tokenizer, data.train), texts_of(tokenizer, data.eval)
    train_letters = {char for text in texts[0] for char in text}
    eval_letters = {char for text in texts[1] for char in text}
    assert train_letters | eval_letters == {"A", "B"} and not train_letters & eval_letters
    assert data.details["eval_files"] in (["a.txt"], ["sub/b.py"])
    ends = [ids for ids in chunks if ids[-1] == EOS]
    assert len(ends) == 1 and len(ends[0]) == 45  # b.py's EOS went with its dropped tail


def test_text_directory_split_by_file_many_files(tmp_path, tokenizer):
    for i in range(30):
        (tmp_path / f"doc{i:02d}.md").write_text(f"<doc{i:02d}> " * 40)
    data = load_data(str(tmp_path), tokenizer, max_seq_len=64, eval_fraction=0.2)
    eval_docs = {text.split(">")[0] for text in texts_of(tokenizer, data.eval)}
    train_docs = {text.split(">")[0] for text in texts_of(tokenizer, data.train)}
    assert eval_docs and train_docs and not eval_docs & train_docs
    expected = {name for name in (f"doc{i:02d}.md" for i in range(30)) if hash_value(name) < 0.2}
    assert set(data.details["eval_files"]) == expected
    # Plain text keeps the eval files' openings as prompts.
    assert data.prompts and all(prompt.split(">")[0] in eval_docs for prompt in data.prompts)
    assert "prompt_files" not in data.details


def test_single_text_file_splits_by_position(tmp_path, tokenizer):
    path = tmp_path / "notes.txt"
    text = "".join(f"line {i:03d} of the notes\n" for i in range(100))
    path.write_text(text)
    data = load_data(str(path), tokenizer, max_seq_len=128)
    assert data.details["split"].startswith("by position")
    total = math.ceil((len(text) + 1) / 128)
    assert len(data.train) + len(data.eval) == total
    assert len(data.eval) == round(total * 0.1)
    tail = "".join(sorted(texts_of(tokenizer, data.eval), key=text.index))
    assert text.endswith(tail) and len(tail) > 100
    assert data.description.endswith("(one document)")


def test_directory_with_one_text_file_splits_by_position(tmp_path, tokenizer):
    (tmp_path / "only.md").write_text("".join(f"w{i:03d} " for i in range(200)))
    (tmp_path / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0" * 20)
    data = load_data(str(tmp_path), tokenizer, max_seq_len=64)
    assert data.details["split"].startswith("by position")
    assert data.details["files_found"] == 1
    assert len(data.train) + len(data.eval) == math.ceil(1001 / 64)


def test_text_file_errors(tmp_path, tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.txt' is empty"):
        load_data(str(empty), tokenizer)
    binary = tmp_path / "blob.dat"
    binary.write_bytes(b"\x89PNG\0\0")
    with pytest.raises(DataError, match=r"blob\.dat' is not a text file"):
        load_data(str(binary), tokenizer)
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(DataError, match=r"short\.txt gives 0 chunk\(s\)"):
        load_data(str(short), tokenizer)
    notes = tmp_path / "notes.txt"
    notes.write_text("text " * 100)
    with pytest.raises(DataError, match=r"notes\.txt' is plain text, which has no labels"):
        load_data(str(notes), tokenizer, task="classification")
    with pytest.raises(DataError, match="holds no non-empty text files"):
        (tmp_path / "void").mkdir()
        load_data(str(tmp_path / "void"), tokenizer)


# -------------------------------------------------------------------------- classification

def test_csv_classification(tmp_path, tokenizer):
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(60):
            writer.writerow([f"review number {i}, {'great' if i % 3 else 'awful'}",
                             "10" if i % 3 == 0 else "2"])
    data = load_data(str(path), tokenizer, task="classification", max_seq_len=16)
    assert data.kind == "classification" and data.labels == ["2", "10"]  # numeric order
    assert data.train.column_names == ["input_ids", "attention_mask", "labels"]
    assert all(len(ids) <= 16 for ids in list(data.train["input_ids"]))  # truncated
    full = load_data(str(path), tokenizer, task="classification", max_seq_len=64)
    for text, label in zip(texts_of(tokenizer, full.train), full.train["labels"], strict=True):
        assert (label == 1) == text.endswith("awful")
    assert not set(texts_of(tokenizer, full.eval)) & set(texts_of(tokenizer, full.train))
    assert len(full.train) + len(full.eval) == 60


def test_jsonl_classification_with_int_labels(tmp_path, tokenizer):
    records = [{"text": f"sample {i} " + ("up" if i % 2 else "down"), "label": i % 2}
               for i in range(40)]
    data = load_data(str(write_jsonl(tmp_path / "labels.jsonl", records)), tokenizer,
                     task="classification", max_seq_len=64)
    assert data.labels == ["0", "1"]
    for text, label in zip(texts_of(tokenizer, data.train), data.train["labels"], strict=True):
        assert label == (1 if text.endswith("up") else 0)
    assert sum(data.details["train_class_counts"].values()) == len(data.train)


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("cols.csv", "sentence,category\nhi there,a\n",
     r"cols\.csv' has no column\(s\) text, label \(it has: sentence, category\): name its "
     r"text with --text-column"),
    ("row.csv", "text,label\nfine,a\nalso fine,b\nbroken,a,extra\n",
     r"row\.csv', line 4: 2 columns expected"),
    ("quote.csv", 'text,label\nfine,a\n"open quote,b\n', r"quote\.csv', line \d: malformed CSV"),
    ("one.csv", "text,label\nx,a\ny,a\n", r"one\.csv' has only the label\(s\) \['a'\]"),
    ("nolabel.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n',
     r"nolabel\.jsonl', line 2: the label None is not a class name"),
    ("alpaca.jsonl", '{"instruction": "a", "output": "b"}\n',
     r"alpaca\.jsonl' has no column\(s\) text, label \(it has: instruction, output\)"),
])
def test_bad_classification_files(tmp_path, tokenizer, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        load_data(str(path), tokenizer, task="classification")


# ----------------------------------------------------------------- load_dataset and hub ids

@pytest.fixture
def offline_datasets(tmp_path, monkeypatch) -> Path:
    """An empty HF home, offline. datasets and huggingface_hub read the variables when they
    are imported, so their module constants are patched as well."""
    home = tmp_path / "hf-home"
    home.mkdir()
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


@pytest.mark.parametrize("spec", ["someorg/not-in-the-cache", "not-in-the-cache"])
def test_hub_id_not_in_the_offline_cache(offline_datasets, tokenizer, spec):
    with pytest.raises(DataError) as caught:
        load_data(spec, tokenizer)
    message = str(caught.value)
    assert message.startswith(f"'{spec}' is neither a local file or directory nor a data set "
                              "in the Hugging Face cache")
    assert "HF_HOME" in message and "pass a local file" in message and "\n" not in message


def test_local_dataset_directory_goes_through_load_dataset(offline_datasets, tmp_path,
                                                           tokenizer):
    folder = tmp_path / "my-set"
    folder.mkdir()
    write_jsonl(folder / "data.jsonl", alpaca_records())
    (folder / "README.md").write_text("# my set\n")
    data = load_data(str(folder), tokenizer)
    assert data.kind == "instruction" and data.details["source"] == str(folder)
    assert len(data.train) + len(data.eval) == 20
    # The same records from the file itself give the same splits.
    direct = load_data(str(folder / "data.jsonl"), tokenizer)
    assert list(direct.train["prompt"]) == list(data.train["prompt"])
    assert direct.fingerprint == data.fingerprint


def test_local_dataset_directory_with_text_and_labels(offline_datasets, tmp_path, tokenizer):
    folder = tmp_path / "labelled"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"text": f"item {i} {'odd' if i % 2 else 'even'}",
                                          "label": "odd" if i % 2 else "even"}
                                         for i in range(30)])
    data = load_data(str(folder), tokenizer, task="classification", max_seq_len=32)
    assert data.labels == ["even", "odd"] and len(data.train) + len(data.eval) == 30
    text = load_data(str(folder), tokenizer, max_seq_len=32)  # causal: a `text` column
    assert text.kind == "text" and text.details["split"] == "by record"


# -- one evaluation set whatever the training seed ------------------------------------------------


@pytest.mark.parametrize("spec, options", [
    ("stdlib-code", dict(max_samples=60, max_seq_len=128)),
    ("stdlib-instruct", dict(max_samples=40, max_seq_len=1024)),
    ("stdlib-topics", dict(task="classification", max_samples=80, max_seq_len=64)),
])
def test_the_eval_split_follows_the_eval_seed_not_the_training_seed(tokenizer, spec, options):
    runs = {(seed, eval_seed): load_data(spec, tokenizer, seed=seed, eval_seed=eval_seed,
                                         **options)
            for seed, eval_seed in ((0, 0), (1, 0), (0, 1))}
    column = runs[0, 0].eval.column_names[0]
    same_eval = runs[0, 0].eval[column] == runs[1, 0].eval[column]
    assert same_eval and runs[0, 0].prompts == runs[1, 0].prompts
    assert runs[0, 0].train[column] != runs[1, 0].train[column]  # the seed still orders training
    assert runs[0, 0].eval[column] != runs[0, 1].eval[column]  # another eval seed, another sample
    assert runs[0, 0].train[column] == runs[0, 1].train[column]
    assert runs[1, 0].details["eval_seed"] == 0 and runs[1, 0].details["seed"] == 1


def test_duplicates_across_the_split_leave_training_not_the_eval_set(tmp_path, tokenizer):
    """Files copied under two names can land on both sides: the copy in training is dropped,
    whatever the training seed samples, so the eval split stays the eval seed's own."""
    for index in range(40):
        text = f"def twin_{index}(x):\n    return x * {index} + {index * 7}\n" * 3
        (tmp_path / f"a_{index}.py").write_text(text)
        (tmp_path / f"b_{index}.py").write_text(text)
    loaded = [load_data(str(tmp_path), tokenizer, max_samples=12, max_seq_len=64, seed=seed)
              for seed in range(4)]
    evals = {tuple(map(tuple, data.eval["input_ids"])) for data in loaded}
    assert len(evals) == 1
    held = set(next(iter(evals)))
    assert any(data.details["train_duplicates_dropped"] > 0 for data in loaded)
    for data in loaded:
        assert not held & {tuple(ids) for ids in data.train["input_ids"]}
