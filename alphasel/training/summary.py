"""summary.json's figures: what a finished run reports (DESIGN.md, "The run record")."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from alphasel.jsonfiles import read_jsonl
from alphasel.provenance import utc_now
from alphasel.training.callbacks import MetricsCallback
from alphasel.training.record import METRICS_FILE
from alphasel.training.task_metrics import EVAL_IN_TRAIN, EVAL_PREFIX


def run_summary(path: Path, trainer: Any, metrics: MetricsCallback, memory: dict,
                counts: tuple[int, int], started: float, resumed_step: int | None,
                world_size: int) -> dict[str, Any]:
    """The final and best eval loss, and the final evaluation's other results (the task's own
    metrics: accuracy, macro-F1, MCC, ...; perplexity and token accuracy), from the run's
    metrics.jsonl, its times, tokens, peak memory, parameters (``counts``: trainable, total)
    and steps. A resumed run's time and token figures cover its last session (the one that
    finished); ``resumed_from_step`` says where that session began."""
    evals = [row for row in read_jsonl(path / METRICS_FILE) if "eval_loss" in row]
    losses = [row["eval_loss"] for row in evals if row["eval_loss"] is not None]  # NaN → null
    training = metrics.train_seconds - metrics.eval_seconds
    summary = {
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "best_eval_loss": min(losses) if losses else None,
        "wall_s": round(time.perf_counter() - started, 3),
        "train_wall_s": round(metrics.train_seconds, 3),
        EVAL_IN_TRAIN: round(metrics.eval_seconds, 3),
        "train_tokens": metrics.tokens,
        "tokens_per_s": round(metrics.tokens / training, 2) if training > 0 else None,
        "peak_memory_mb": memory["peak_memory_mb"], "peak_memory": memory,
        "trainable_params": counts[0], "total_params": counts[1],
        "global_step": trainer.state.global_step, "epochs": trainer.state.epoch,
        "resumed_from_step": resumed_step, "world_size": world_size,
        "device": str(trainer.args.device), "finished": utc_now(),
    }
    if evals:
        summary.update({key: value for key, value in evals[-1].items()
                        if key.startswith(EVAL_PREFIX) and key != "eval_loss"})
    return summary
