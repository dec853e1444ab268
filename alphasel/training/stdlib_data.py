"""The built-in data sets (`alphasel.training.data.BUILTIN`), from the installed standard library.

The standard library is a real corpus that is always on disk, so the built-in sets work offline
and in CI. This module finds the files and pulls text out of them (source, functions with
docstrings, docstrings by package); the split, format and tokenizing steps, shared with every
other source, are in `alphasel.training.splits`. Files are keyed by their path relative to the
stdlib root (posix form), which is what the split hashes: the same file lands on the same side
on every machine with that Python.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from alphasel.errors import DataError
from alphasel.training.splits import (
    NUM_PROMPTS,
    SplitOptions,
    TrainData,
    assign_sides,
    classification_data,
    hash_value,
    instruction_data,
    text_data,
)

#: Directories that are not library code (tests, IDLE, demos, third-party installs, caches).
EXCLUDED_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__",
                           "turtledemo"})

#: Packages for stdlib-topics: present in every CPython 3.11+ build (so the label set does not
#: depend on how Python was built, unlike tkinter, or on the version, unlike distutils) and each
#: with well over 100 docstrings of at least MIN_DOCSTRING characters.
TOPIC_PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing",
                  "unittest", "xml")

#: Shorter docstrings ("Close.", "Internal use.") say nothing about the code around them.
MIN_DOCSTRING = 20

#: Function sources kept for stdlib-instruct, in lines: one-liners teach nothing and very long
#: functions do not fit a small model's context.
FUNCTION_LINES = (3, 60)

#: A stdlib-code generation prompt is a function's head; its body must have this many lines
#: for the completion before and after training to show something.
PROMPT_BODY_LINES = 3

#: Longer heads (a docstring that is a manual page) bury the completion in the prompt.
PROMPT_MAX_LINES = 15


@dataclass(frozen=True)
class FunctionExample:
    """One stdlib function or method with its docstring and its dedented source."""

    qualname: str
    """`name` for a module-level function, `Class.name` for a method."""
    signature: str
    """The parameter list (and return annotation) as written, e.g. `(self, data=None) -> int`."""
    docstring: str
    source: str
    """The full definition, decorators and docstring included, dedented to column 0."""
    is_method: bool


def stdlib_root() -> Path:
    """The directory of the running Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[str]:
    """Relative posix paths of the library's .py files, sorted, without the excluded dirs."""
    root = root or stdlib_root()
    files = []
    for folder, subfolders, names in os.walk(root):
        # Pruned in place so os.walk never enters site-packages (thousands of files) or tests.
        subfolders[:] = [name for name in subfolders if name not in EXCLUDED_DIRS]
        relative = Path(folder).relative_to(root)
        files.extend((relative / name).as_posix() for name in names if name.endswith(".py"))
    return sorted(files)


def module_name(relative: str) -> str:
    """The dotted module name of a stdlib file: `json/__init__.py` → `json`."""
    parts = relative.removesuffix(".py").split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def read_module(relative: str, root: Path | None = None) -> tuple[str, ast.Module] | None:
    """(source, syntax tree) of a stdlib file, or None when it is not UTF-8 or does not parse.

    Some stdlib files are deliberately broken (bad encodings, syntax-error fixtures), and
    the built-in sets skip them rather than fail.
    """
    path = (root or stdlib_root()) / relative
    try:
        source = path.read_text(encoding="utf-8")
        return source, ast.parse(source)
    except (UnicodeDecodeError, SyntaxError, ValueError, OSError):
        return None


def function_examples(source: str, tree: ast.Module) -> list[FunctionExample]:
    """Module-level functions and methods of module-level classes with a docstring of at least
    MIN_DOCSTRING characters and a definition of FUNCTION_LINES lines."""
    lines = source.splitlines()
    examples = []
    for owner, node in _functions(tree):
        docstring = ast.get_docstring(node)
        if not docstring or len(docstring) < MIN_DOCSTRING:
            continue
        first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
        if not FUNCTION_LINES[0] <= node.end_lineno - first + 1 <= FUNCTION_LINES[1]:
            continue
        text = _dedent(lines[first - 1:node.end_lineno], node.col_offset)
        signature = f"({ast.unparse(node.args)})"
        if node.returns is not None:
            signature += f" -> {ast.unparse(node.returns)}"
        examples.append(FunctionExample(
            qualname=f"{owner}.{node.name}" if owner else node.name, signature=signature,
            docstring=docstring, source=text, is_method=owner is not None))
    return examples


def function_head(source: str, tree: ast.Module) -> str | None:
    """The head of the module's first function fit to prompt with, as written in `source`: its
    `def` line(s) and docstring, a newline and the body's indentation, so that a greedy
    completion of it is the body. None when no module-level function has a docstring of at
    least MIN_DOCSTRING characters, PROMPT_BODY_LINES lines of body after it, a head of at most
    PROMPT_MAX_LINES lines and its body on the line right after the docstring."""
    lines = source.splitlines(keepends=True)
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or len(node.body) < 2:
            continue
        docstring = ast.get_docstring(node)
        first, body = node.body[0], node.body[1]
        if (not docstring or len(docstring) < MIN_DOCSTRING
                or node.end_lineno - body.lineno + 1 < PROMPT_BODY_LINES
                or first.end_lineno - node.lineno + 1 > PROMPT_MAX_LINES):
            continue
        closing, after = lines[first.end_lineno - 1], lines[first.end_lineno]
        # ast columns count UTF-8 bytes, and a docstring may hold other characters.
        end = len(closing.encode()[:first.end_col_offset].decode())
        indent = after[:body.col_offset]  # whitespace: as many characters as bytes
        # Only a head followed verbatim by its body's indented code (no blank line, nothing
        # after the docstring on its line): the prompt is then text the model could have seen.
        if (closing[end:] != "\n" or not indent or indent.strip(" \t")
                or not after[len(indent):len(indent) + 1].strip()):
            continue
        return "".join(lines[node.lineno - 1:first.end_lineno - 1]) + closing[:end] + "\n" + indent
    return None


def docstrings(tree: ast.Module) -> list[str]:
    """The docstrings of a module, its classes and its functions (at any depth), in source order,
    each at least MIN_DOCSTRING characters."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            text = ast.get_docstring(node)
            if text and len(text) >= MIN_DOCSTRING:
                found.append((getattr(node, "lineno", 0), text))
    return [text for _, text in sorted(found, key=lambda item: item[0])]


def topic_of(relative: str) -> str | None:
    """The stdlib-topics label of a file: its top-level package when that is a topic package."""
    top = relative.split("/")[0]
    return top if "/" in relative and top in TOPIC_PACKAGES else None


def load_builtin(name: str, options: SplitOptions) -> TrainData:
    """One of the built-in sets, split by file (see `alphasel.training.data.load_data`)."""
    root = stdlib_root()
    files = stdlib_files(root)
    details: dict = {"source": "builtin", "stdlib": str(root), "stdlib_files": len(files)}
    if name == "stdlib-code":
        _needs_task(name, "causal", options, "causal language-model data")

        def read(relative: str) -> str | None:
            module = read_module(relative, root)
            return module[0] if module else None

        def prompts_of(held_out: list[str]) -> list[str]:
            # A function's head, whose completion is its body, shows more than a file's first
            # lines (a shebang, imports, a licence) of what training changed.
            heads: dict[str, str] = {}
            for relative in held_out:
                module = read_module(relative, root)
                head = function_head(*module) if module else None
                if head:
                    heads[relative] = head
                if len(heads) == NUM_PROMPTS:
                    break
            details["prompt_files"] = list(heads)
            return list(heads.values())

        return text_data(name, files, read, options, "files", details, prompts_of)
    if name == "stdlib-instruct":
        _needs_task(name, "causal", options, "instruction data for causal language models")
        details["split"] = "by file"

        def records_of(relative: str) -> list[tuple[str, str, str]]:
            module = read_module(relative, root)
            if module is None:
                return []
            records = []
            for function in function_examples(*module):
                what = "method" if function.is_method else "function"
                records.append((
                    f"Write the Python {what} `{function.qualname}{function.signature}` from "
                    f"the module `{module_name(relative)}`.\n\n"
                    f"Its docstring:\n{function.docstring}", "", function.source))
            return records

        return instruction_data(name, files, assign_sides(files, options.eval_fraction),
                                records_of, options, "files", details)
    _needs_task(name, "classification", options, "classification data")
    return _topics(name, root, files, options, details)


def _needs_task(name: str, task: str, options: SplitOptions, what: str) -> None:
    if options.task != task:
        hint = "add --task classification" if task == "classification" else "use --task causal"
        raise DataError(f"{name} is {what}: {hint}")


def _topics(name: str, root: Path, files: list[str], options: SplitOptions,
            details: dict) -> TrainData:
    """stdlib-topics: docstring → package. Split by file within each package, so every class
    has eval files; a text found under two packages, or twice, is kept once or dropped."""
    by_file: dict[str, tuple[str, list[str]]] = {}
    for relative in files:
        topic = topic_of(relative)
        module = read_module(relative, root) if topic else None
        if module is not None:
            by_file[relative] = (topic, docstrings(module[1]))
    labels = sorted({topic for topic, _ in by_file.values()})
    if len(labels) < 5:
        raise DataError(f"{name} found only {len(labels)} of the packages "
                        f"{', '.join(TOPIC_PACKAGES)} in {root}: this Python's standard library "
                        "is incomplete; use another data set")
    topics_of_text: dict[str, set] = {}
    for topic, texts in by_file.values():
        for text in texts:
            topics_of_text.setdefault(text, set()).add(topic)
    sides = {}
    for topic in labels:
        sides.update(_sides_by_weight(
            {key: len(texts) for key, (owner, texts) in by_file.items() if owner == topic},
            options.eval_fraction))
    rows: dict[str, list] = {"train": [], "eval": []}
    seen: set[str] = set()
    for relative, (topic, texts) in by_file.items():
        for text in texts:
            if len(topics_of_text[text]) == 1 and text not in seen:
                seen.add(text)
                rows[sides[relative]].append((relative, {"text": text,
                                                         "label": labels.index(topic)}))
    details.update(split="by file within each package", packages=labels,
                   ambiguous_texts_dropped=sum(len(t) > 1 for t in topics_of_text.values()))
    return classification_data(name, rows, labels, options, "files", details, balance=True)


def _sides_by_weight(weights: dict[str, int], eval_fraction: float) -> dict[str, str]:
    """One class's files → sides: in hash order, a file goes to eval while the eval share of
    the class's examples stays within eval_fraction; with two or more files at least one (the
    smallest) goes to eval. Stable and by file like `assign_sides`, but a class made of a few
    big files (logging has three) still gets an eval share near eval_fraction."""
    order = sorted((key for key in weights if weights[key]), key=hash_value)
    budget = eval_fraction * sum(weights.values())
    sides, taken = dict.fromkeys(weights, "train"), 0
    for key in order:
        if taken + weights[key] <= budget:
            sides[key], taken = "eval", taken + weights[key]
    if taken == 0 and len(order) >= 2:
        sides[min(order, key=lambda key: (weights[key], hash_value(key)))] = "eval"
    return sides


def _functions(tree: ast.Module):
    """(class name or None, function node) for module-level functions and methods."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield None, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield node.name, item


def _dedent(lines: list[str], indent: int) -> str:
    """Remove a method's indentation. textwrap.dedent would keep it whenever a multi-line string
    inside the body has a line at column 0, so strip exactly the definition's own indent."""
    prefix = " " * indent
    return "\n".join(line[indent:] if line.startswith(prefix) else line
                     for line in lines) + "\n"
