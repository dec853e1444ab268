"""Trainer callbacks and profiling: metrics.jsonl lines, tokens/s, peak memory, the console.

The Trainer does the loop, logging, evaluation and checkpoints; these only observe it and write
what the run record needs. Only the main process writes (``state.is_world_process_zero``).
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch
from transformers import TrainerCallback

from alphasel.training.record import RunWriter
from alphasel.training.task_metrics import EVAL_PREFIX

#: Trainer log keys → metrics.jsonl keys.
_TRAIN_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm"}
#: Eval keys the Trainer adds that say how long evaluation took, not how the model does.
_EVAL_TIMING = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def _eval_results(logs: dict) -> dict:
    """An evaluation's results in a Trainer log: its eval_* keys but the timing ones."""
    return {key: value for key, value in logs.items()
            if key.startswith(EVAL_PREFIX) and key not in _EVAL_TIMING}


class MetricsCallback(TrainerCallback):
    """One metrics.jsonl line per logged step (loss, lr, grad_norm, tokens_per_s) and per
    evaluation (eval_loss, eval_accuracy, …), each with its step and epoch.

    Evaluations inside the loop (at the start, every N steps, per epoch) are timed by the
    Trainer (``eval_runtime``); that time is left out of tokens/s, which measures training."""

    def __init__(self, writer: RunWriter | None) -> None:
        self.writer = writer
        self._last_time = 0.0
        self._last_tokens = 0
        self._eval_since_log = 0.0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self._started = 0.0
        self._training = False
        self._start_tokens = 0
        self.tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = self._last_time = time.perf_counter()
        self._training = True
        # A resumed run starts from its checkpoint's count; count this session's tokens only.
        self._start_tokens = self._last_tokens = state.num_input_tokens_seen

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Re-selection trains in several Trainer.train() calls: the totals add up.
        self._training = False
        self.train_seconds += time.perf_counter() - self._started
        self.tokens += state.num_input_tokens_seen - self._start_tokens

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        if "eval_runtime" in logs and self._training:
            self._eval_since_log += logs["eval_runtime"]
            self.eval_seconds += logs["eval_runtime"]
        if self.writer is None:
            return
        row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch}
        if any(key.startswith(EVAL_PREFIX) for key in logs):
            row.update(_eval_results(logs))
            self.writer.log_metrics(row)
            return
        if "loss" not in logs:  # the Trainer's closing train_runtime/train_loss summary
            return
        row.update({ours: logs[theirs] for theirs, ours in _TRAIN_KEYS.items() if theirs in logs})
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        elapsed = now - self._last_time - self._eval_since_log
        row["tokens"] = tokens
        row["tokens_per_s"] = (tokens - self._last_tokens) / elapsed if elapsed > 0 else None
        self._last_time, self._last_tokens, self._eval_since_log = now, tokens, 0.0
        self.writer.log_metrics(row)


def start_memory_tracking() -> None:
    """Reset CUDA's peak counters so the peak is the training's, not an earlier job's: the
    cache is released first, since the reserved peak resets only to what is still reserved
    (a second run in one process would otherwise report the first one's memory)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float]:
    """Peak memory in MB: ``rss_mb`` (this process's peak resident set, from the kernel), and on
    CUDA ``cuda_allocated_mb`` / ``cuda_reserved_mb`` (the caching allocator's peaks).
    ``peak_memory_mb`` is the figure that matters on the device that trained: reserved on CUDA
    (what the GPU actually gave up), RSS on CPU."""
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    memory = {"rss_mb": round(rss_mb, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        memory["cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        memory["cuda_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        memory["peak_memory_mb"] = memory["cuda_reserved_mb"]
    else:
        memory["peak_memory_mb"] = memory["rss_mb"]
    return memory


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class ConsoleCallback(TrainerCallback):
    """The Trainer's console: a step bar (with ``progress``) showing the latest loss and eval
    loss, and a line per evaluation. It replaces transformers' own progress and printer
    callbacks, which print every log as a raw dict and a bar per evaluation. Only the main
    process shows anything."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress
        self.bar: Any = None
        self.shown: dict[str, str] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not (self.progress and state.is_world_process_zero):
            return
        from tqdm.auto import tqdm

        # Re-selection trains in several Trainer.train() calls: each continues the same count.
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training",
                        unit="step", dynamic_ncols=True)
        if self.shown:
            self.bar.set_postfix(self.shown, refresh=False)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        if "loss" in logs:
            self.shown["loss"] = _number(logs["loss"])
        results = {key.removeprefix(EVAL_PREFIX): value
                   for key, value in _eval_results(logs).items()}
        if results:
            self.shown["eval_loss"] = _number(results.get("loss"))
            line = f"step {state.global_step}: " + ", ".join(
                f"eval {name} {_number(value)}" for name, value in results.items())
            self._write(line)
        if self.bar is not None:
            self.bar.set_postfix(self.shown)

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
