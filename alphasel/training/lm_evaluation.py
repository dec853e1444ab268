"""A language model's evaluation beyond its loss: per-example eval loss, perplexity and
next-token accuracy, counted from the logits the evaluation already computes (no second pass).

While a Trainer evaluates, :class:`EvaluatesLanguageModel` sees each batch's logits and labels
(the labels TRL's collator built: -100 where no loss is taken, the prompt of instruction data
among them) and counts, per example, the summed next-token cross-entropy, its tokens and the
tokens whose argmax is the label. The evaluation then also reports ``eval_perplexity`` (exp of
the token-mean loss over the whole eval split) and ``eval_token_accuracy``, and keeps the last
evaluation's per-example losses for eval_predictions.jsonl. Under several processes each
batch's counts are gathered as the Trainer gathers its losses (accelerate's
``gather_for_metrics``: in the eval split's order, the sampler's padding dropped), so every
process holds the whole split's.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class TokenCounts:
    """Per-example next-token loss sums, token counts and correct predictions of one
    evaluation."""

    def __init__(self) -> None:
        self.examples: list[dict[str, float]] = []

    @staticmethod
    def count(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One batch's counts, per example (batch × 3: summed next-token loss, tokens
        scored, tokens right): ``logits`` (batch × tokens × vocabulary) predict the next token,
        ``labels`` (batch × tokens) hold it, -100 where no loss is taken."""
        predicted = logits[:, :-1].float()
        target = labels[:, 1:].to(predicted.device)
        counted = target != -100
        losses = torch.nn.functional.cross_entropy(
            predicted.reshape(-1, predicted.shape[-1]), target.reshape(-1).clamp(min=0),
            reduction="none").view(target.shape) * counted
        correct = (predicted.argmax(-1) == target) & counted
        return torch.stack([losses.sum(1), counted.sum(1), correct.sum(1)], dim=1).double()

    def add(self, counts: torch.Tensor) -> None:
        """Keep a batch's :meth:`count` (gathered over processes, when there are several)."""
        for loss, tokens, right in counts.tolist():
            self.examples.append({"loss_sum": float(loss), "tokens": int(tokens),
                                  "correct": int(right)})

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """``<prefix>_perplexity`` (exp of the token-mean loss) and ``<prefix>_token_accuracy``
        over every counted token (none counted: nothing)."""
        tokens = sum(example["tokens"] for example in self.examples)
        if not tokens:
            return {}
        mean = sum(example["loss_sum"] for example in self.examples) / tokens
        return {f"{prefix}_perplexity": math.exp(mean) if mean < 700 else math.inf,
                f"{prefix}_token_accuracy": sum(example["correct"]
                                                for example in self.examples) / tokens}

    def rows(self) -> list[dict[str, Any]]:
        """eval_predictions.jsonl's rows for a language model: per example its id (its place in
        the eval split), tokens scored, token-mean loss and correct next tokens."""
        return [{"id": index, "tokens": example["tokens"],
                 "loss": example["loss_sum"] / example["tokens"] if example["tokens"]
                 else None, "correct_tokens": example["correct"]}
                for index, example in enumerate(self.examples)]


class EvaluatesLanguageModel:
    """Trainer mixin: each evaluation counts its tokens (:class:`TokenCounts`) and reports
    perplexity and next-token accuracy beside its loss; ``last_counts`` holds the last one's."""

    last_counts: TokenCounts | None = None
    _counting: TokenCounts | None = None

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        self._counting = TokenCounts()
        try:
            output = super().evaluation_loop(*args, **kwargs)  # type: ignore[misc]
        finally:
            counts, self._counting = self._counting, None
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        output.metrics.update(counts.metrics(prefix))
        self.last_counts = counts
        return output

    def count_tokens(self, outputs: Any, inputs: dict) -> None:
        """Called with each evaluation batch's outputs (when an evaluation is counting)."""
        if self._counting is not None and "labels" in inputs:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
            counts = TokenCounts.count(logits.detach(), inputs["labels"])
            self._counting.add(self.accelerator.gather_for_metrics(counts))  # type: ignore
