"""Downstream benchmarks during a run: lm-evaluation-harness tasks on the model as it is in
memory (no merge to disk, no second load), before training and after it.

``--eval-harness arc_easy,hellaswag`` names lm-eval's own tasks (their data must be in the
Hugging Face cache: nothing is downloaded here), ``--eval-harness-include DIR`` adds the task
YAMLs of a directory (a user's own tasks with local data), and ``stdlib-mc``
(:mod:`alphasel.training.stdlib_mc`) is alphasel's own, built offline from the standard
library's held-out files. lm-eval is the optional extra ``alphasel[eval]``.

Each evaluation gives, per task, its metrics and their standard errors (lm-eval's ``acc,none``
and ``acc_stderr,none`` become ``acc`` and ``acc_stderr``); a run records them as
``harness_<task>_<metric>`` (in metrics.jsonl at step 0 and the last step, the final ones in
summary.json), which studies summarise over seeds like the eval loss.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alphasel.cache import user_cache_dir
from alphasel.errors import TrainConfigError
from alphasel.training.stdlib_mc import TASK as STDLIB_MC
from alphasel.training.stdlib_mc import task_config
from alphasel.training.task_metrics import HARNESS_PREFIX as PREFIX

#: The folder of the user's cache where alphasel's own generated task files are kept.
TASK_CACHE = "harness-tasks"


def harness_installed() -> bool:
    """Whether lm-evaluation-harness (the ``lm-eval`` package) can be imported here."""
    return importlib.util.find_spec("lm_eval") is not None


def _task_manager(tasks: list[str], include: str | None) -> Any:
    """lm-eval's TaskManager over ``include``, with lm-eval's own task index only when a task
    is neither alphasel's nor the include directory's (indexing its thousands of YAMLs takes
    seconds)."""
    from lm_eval.tasks import TaskManager

    others = [task for task in tasks if task != STDLIB_MC]
    if include is not None:
        manager = TaskManager(include_path=include, include_defaults=False)
        if all(task in manager.all_tasks for task in others):
            return manager
    return TaskManager(include_path=include, include_defaults=bool(others))


def _stdlib_mc(eval_fraction: float) -> dict[str, Any]:
    """stdlib-mc's task config, its questions kept in the user's cache."""
    return task_config(user_cache_dir(TASK_CACHE), eval_fraction)


@contextlib.contextmanager
def _own_generators() -> Iterator[None]:
    """Put Python's, numpy's and torch's global random generators back as they were: lm-eval
    seeds them all, and training draws its dropout and data order from them, so a run with the
    harness trains as the same run without it."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())
                               if torch.cuda.is_initialized() else []):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def check_harness(tasks: list[str], include: str | None, eval_fraction: float = 0.1) -> None:
    """Refuse, before anything trains, harness tasks that cannot run: lm-eval not installed,
    an include directory that does not exist, a task name lm-eval does not know, a task whose
    data cannot be loaded (not in the cache, offline), a stdlib-mc without questions."""
    if not tasks:
        return
    if not harness_installed():
        raise TrainConfigError("--eval-harness needs lm-evaluation-harness, which is not "
                               "installed: pip install 'alphasel[eval]'")
    if include is not None and not Path(include).is_dir():
        raise TrainConfigError(f"--eval-harness-include {include} is not a directory of task "
                               "YAMLs: give the folder that holds them")
    if STDLIB_MC in tasks:
        _stdlib_mc(eval_fraction)
    others = [task for task in tasks if task != STDLIB_MC]
    if not others:
        return
    manager = _task_manager(others, include)
    unknown = [task for task in others if task not in set(manager.all_tasks)]
    if unknown:
        raise TrainConfigError(f"--eval-harness {','.join(unknown)}: lm-eval knows no such "
                               f"task (list them with `lm-eval ls tasks`; {STDLIB_MC} is "
                               "alphasel's own; your YAMLs go in with --eval-harness-include)")
    try:
        manager.load(others)  # loads each task's data: from the cache, offline
    except Exception as err:  # noqa: BLE001 - datasets and lm-eval raise many kinds
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TrainConfigError(f"--eval-harness {','.join(others)}: a task's data cannot be "
                               f"loaded ({type(err).__name__}: {first}); have it in the Hugging "
                               "Face cache (nothing is downloaded offline) or give a task with "
                               "local data via --eval-harness-include") from None


def evaluate_harness(model: torch.nn.Module, tokenizer: Any, tasks: list[str], *,
                     limit: int | None = None, fewshot: int | None = None,
                     include: str | None = None, batch_size: int = 8,
                     eval_fraction: float = 0.1, autocast: torch.dtype | None = None
                     ) -> tuple[dict[str, dict[str, float]], float]:
    """Run the harness ``tasks`` on ``model`` as it is: ({task: {metric: value,
    metric_stderr: value}}, seconds). ``limit`` caps each task's examples, ``fewshot`` their
    shots; ``autocast`` computes in that half precision (a half-precision frozen base)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    started = time.perf_counter()
    specs: list[Any] = [_stdlib_mc(eval_fraction) if task == STDLIB_MC else task
                        for task in tasks]
    manager = _task_manager(tasks, include)
    training = model.training
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    device = next(model.parameters()).device
    context = (torch.autocast(device.type, dtype=autocast) if autocast is not None
               else contextlib.nullcontext())
    try:
        with context, _own_generators():
            results = lm_eval.simple_evaluate(
                model=wrapped, tasks=specs, num_fewshot=fewshot, limit=limit,
                task_manager=manager, log_samples=False, verbosity="ERROR",
                random_seed=0, numpy_random_seed=1234, torch_random_seed=1234,
                fewshot_random_seed=1234)
    finally:
        model.train(training)  # HFLM puts the model in eval mode
    return task_metrics(results), time.perf_counter() - started


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's results as {task: {metric: value, metric_stderr: value}}: the metrics of its
    unfiltered (``none``) output, numbers only (a stderr lm-eval did not compute is left out)."""
    found: dict[str, dict[str, float]] = {}
    for task, values in (results.get("results") or {}).items():
        metrics = {}
        for key, value in values.items():
            name, _, filtered = key.partition(",")
            if filtered == "none" and isinstance(value, int | float) and not isinstance(
                    value, bool):
                metrics[name] = float(value)
        if metrics:
            found[task] = metrics
    return found


def flat(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """{task: {metric: value}} as record columns: ``harness_<task>_<metric>``."""
    return {f"{PREFIX}{task}_{name}": value for task, values in metrics.items()
            for name, value in values.items()}
