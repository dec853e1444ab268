"""Benchmark: alphasel's trainer against a bare PEFT + transformers Trainer script, in one run.

    python -m analysis.bench_train                          # SmolLM2, BLoRA k=3, LoRA
    python -m analysis.bench_train --method unfreeze        # the same 21 matrices in full
    python -m analysis.bench_train --method full --steps 20
    python -m analysis.bench_train --model minilm ...       # (causal LMs only)

Both sides train the same model, the same modules (the plan's: LoRA adapters on them, or with
``--method unfreeze`` the matrices themselves and their biases, every other parameter frozen by
hand on the bare side), on the same tokenized examples
(`load_data("stdlib-code")`), with the same batch, sequence length, optimizer, learning rate
and seed, each in a fresh process so peak RSS is its own. Printed from this run only:
train tokens/s (non-padding tokens over the training loop's wall time) and peak RSS of each,
and alphasel / bare ratios. Evaluation, generation and saving are outside the timed loop on
both sides (alphasel evaluates after training; the bare script not at all).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_alphasel(args: argparse.Namespace) -> dict:
    from alphasel.training import TrainConfig, train

    config = TrainConfig(method=args.method, max_steps=args.steps, batch_size=args.batch_size,
                         max_seq_len=args.max_seq_len, max_samples=args.max_samples,
                         eval_every=args.steps + 1, generate=False, save_adapter=False,
                         seed=0, lr=args.lr)
    plan = None if args.method == "full" else args.plan
    with tempfile.TemporaryDirectory() as out:
        record = train(args.model, plan, "stdlib-code", config, out=Path(out) / "run",
                       progress=False)
    summary = record.summary
    return {"tokens": summary["train_tokens"], "seconds": summary["train_wall_s"],
            "tokens_per_s": summary["tokens_per_s"], "peak_rss_mb": _peak_rss_mb(),
            "trainable_params": summary["trainable_params"]}


class _LoopClock:
    """Times the training loop from on_train_begin to on_train_end, as alphasel's callback
    does, so both sides leave out the same setup."""

    def __getattr__(self, name: str):
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_train_begin(self, *args, **kwargs) -> None:
        self.started = time.perf_counter()

    def on_train_end(self, *args, **kwargs) -> None:
        self.seconds = time.perf_counter() - self.started


def run_bare(args: argparse.Namespace) -> dict:
    """What a researcher would write by hand: transformers + PEFT, nothing of alphasel's but
    the data loader (so the examples are identical) and the plan's module list."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GgufConfig,
        Trainer,
        TrainingArguments,
    )

    from alphasel.plan import InjectionPlan
    from alphasel.sources import packaged_model
    from alphasel.training.data import load_data

    path, _ = packaged_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True))
    data = load_data("stdlib-code", tokenizer, max_seq_len=args.max_seq_len,
                     max_samples=args.max_samples, seed=0)
    torch.manual_seed(0)
    if args.method == "full":
        trainable = sum(p.numel() for p in model.parameters())
    elif args.method == "unfreeze":
        chosen = set(InjectionPlan.load(args.plan).module_names)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.rpartition(".")[0] in chosen)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    else:
        plan = InjectionPlan.load(args.plan)
        module = plan.modules[0]
        model = get_peft_model(model, LoraConfig(target_modules=plan.module_names,
                                                 r=module.rank, lora_alpha=module.lora_alpha,
                                                 task_type="CAUSAL_LM"))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def collate(examples: list[dict]) -> dict:
        longest = max(len(example["input_ids"]) for example in examples)
        ids = torch.full((len(examples), longest), tokenizer.pad_token_id)
        labels = torch.full((len(examples), longest), -100)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example["input_ids"])
            ids[row, :length] = labels[row, :length] = torch.tensor(example["input_ids"])
            mask[row, :length] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    training = TrainingArguments(
        output_dir=tempfile.mkdtemp(), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, seed=0,
        logging_steps=1, save_strategy="no", report_to="none", optim="adamw_torch",
        include_num_input_tokens_seen="non_padding", disable_tqdm=True)
    clock = _LoopClock()
    trainer = Trainer(model=model, args=training, train_dataset=data.train,
                      data_collator=collate, callbacks=[clock])
    trainer.train()
    seconds = clock.seconds
    tokens = trainer.state.num_input_tokens_seen
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_mb": _peak_rss_mb(), "trainable_params": trainable}


def _child(side: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "analysis.bench_train", "--side", side,
               "--model", args.model, "--method", args.method, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len),
               "--max-samples", str(args.max_samples), "--lr", str(args.lr)]
    if args.plan:
        command += ["--plan", str(args.plan)]
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    if result.returncode != 0:
        sys.exit(f"{side} run failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="a packaged causal LM (smollm2)")
    parser.add_argument("--method", default="lora", choices=("lora", "unfreeze", "full"))
    parser.add_argument("--scheme", default="blora")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--max-samples", type=int, default=400)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=("alphasel", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = run_alphasel(args) if args.side == "alphasel" else run_bare(args)
        print(json.dumps(result))
        return

    if args.method != "full":
        from alphasel import analyze, make_plan

        plan = make_plan(analyze(args.model, progress=False), args.scheme, args.k,
                         method=args.method)
        args.plan = Path(tempfile.mkdtemp()) / "plan.json"
        plan.save(args.plan)
        print(f"plan: {args.scheme} k={args.k}, {len(plan.modules)} modules, "
              f"{plan.trainable_params:,} trainable parameters")
    print(f"{args.model} {args.method}: {args.steps} steps of batch {args.batch_size} × "
          f"≤{args.max_seq_len} tokens, stdlib-code (one process each, one after the other)")
    bare = _child("bare", args)
    ours = _child("alphasel", args)
    print(f"{'':>10} {'tokens':>8} {'train s':>8} {'tokens/s':>9} {'peak RSS MB':>12} "
          f"{'trainable':>11}")
    for name, result in (("bare", bare), ("alphasel", ours)):
        print(f"{name:>10} {result['tokens']:>8} {result['seconds']:>8.1f} "
              f"{result['tokens_per_s']:>9.1f} {result['peak_rss_mb']:>12.0f} "
              f"{result['trainable_params']:>11,}")
    print(f"alphasel / bare: tokens/s {ours['tokens_per_s'] / bare['tokens_per_s']:.3f}, "
          f"peak RSS {ours['peak_rss_mb'] / bare['peak_rss_mb']:.3f}")
    if ours["tokens"] != bare["tokens"]:
        print(f"note: token counts differ ({ours['tokens']} vs {bare['tokens']}): the two "
              "loops did not see the same examples")


if __name__ == "__main__":
    main()
