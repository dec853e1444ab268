"""stdlib-mc: a multiple-choice task for lm-evaluation-harness, made offline from the installed
standard library's held-out files.

Each question is a function's docstring (its first paragraph) and four names of functions of
the same package, one of them the function the docstring belongs to: which one does it
describe? The construction, and why:

- the files are those stdlib-code and stdlib-instruct hold out (the same split by file, at the
  run's eval fraction), so a model is never asked about code it trained on;
- the three wrong names come from the same top-level package, so they share its vocabulary and
  a question cannot be answered by recognising the topic alone;
- a function whose name (or its words) appears in its own docstring is left out: the answer
  would be copied, not understood;
- a name is one of the package's functions once (methods of several classes often share a
  name: ``close``, ``__init__``), dunder names are left out, and the choices and the questions'
  order come from a fixed seed, so every run asks the same questions in the same order.

Chance is 0.25. lm-eval scores each choice by its log-likelihood after the question (``acc``)
and by that per byte (``acc_norm``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

from alphasel.atomic import write_text
from alphasel.errors import DataError
from alphasel.training.splits import assign_sides
from alphasel.training.stdlib_data import (
    function_examples,
    read_module,
    stdlib_files,
    stdlib_root,
)

#: The task's name, as --eval-harness takes it.
TASK = "stdlib-mc"
#: Choices per question, one right.
CHOICES = 4
#: What the model reads before each choice (lm-eval puts a space between it and the choice).
PROMPT = ("{{docstring}}\n\nQuestion: which function of the Python package `{{package}}` does "
          "the docstring above describe?\nAnswer:")
_SEED = 20261206


@functools.cache
def questions(eval_fraction: float = 0.1, root: Path | None = None) -> list[dict[str, Any]]:
    """The task's questions from the held-out files (see the module docstring): each with the
    docstring, the ``file`` it is from, the package, the four ``choices`` and the right one's
    index ``answer``. Computed once per process (a run checks the task, then asks it twice);
    callers must not change the list."""
    root = root or stdlib_root()
    files = stdlib_files(root)
    sides = assign_sides(files, eval_fraction)
    by_package: dict[str, dict[str, str]] = {}
    for relative in (file for file in files if sides[file] == "eval"):
        module = read_module(relative, root)
        if module is None:
            continue
        package = relative.removesuffix(".py").split("/")[0]
        for function in function_examples(*module):
            name = function.qualname.rsplit(".", 1)[-1]
            if name.startswith("__") or _named_in(name, function.docstring):
                continue
            # A name shared by several functions of the package is no single answer.
            pool = by_package.setdefault(package, {})
            pool[name] = (("", "") if name in pool else
                          (function.docstring.split("\n\n")[0].strip(), relative))
    rng = random.Random(_SEED)
    found = []
    for package, pool in sorted(by_package.items()):
        named = {name: entry for name, entry in pool.items() if entry[0]}
        names = sorted(pool)
        if len(names) < CHOICES:
            continue
        for name, (text, file) in sorted(named.items()):
            wrong = rng.sample([other for other in names if other != name], CHOICES - 1)
            choices = [name, *wrong]
            rng.shuffle(choices)
            found.append({"docstring": text, "file": file, "package": package,
                          "choices": choices, "answer": choices.index(name)})
    rng.shuffle(found)
    return found


def _named_in(name: str, docstring: str) -> bool:
    """Whether the docstring gives the name away: the name itself, or all of its words."""
    text = docstring.lower()
    words = [word for word in re.split(r"_+", name.lower()) if word]
    return name.lower() in text or (len(words) > 1 and all(word in text for word in words))


def task_config(folder: Path, eval_fraction: float = 0.1) -> dict[str, Any]:
    """The task as an lm-eval task config (a dict lm-eval's TaskManager loads like a YAML), its
    questions written once to ``folder`` as JSONL (named by the Python and the eval fraction,
    so a cached file is only reused for the same held-out files)."""
    items = questions(eval_fraction)
    if not items:
        raise DataError(f"{TASK}: this Python's standard library gives no question (too few "
                        "held-out functions): use another task")
    text = "".join(json.dumps(item, sort_keys=True) + "\n" for item in items)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(folder) / f"{TASK}-{digest}.jsonl"
    if not path.is_file():  # several runs at once each write it whole, under its own name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    return {"task": TASK, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test",
            "output_type": "multiple_choice", "doc_to_text": PROMPT,
            "doc_to_choice": "{{choices}}", "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean",
                             "higher_is_better": True}],
            "metadata": {"version": 1.0, "questions": len(items)}}
