"""`alphasel train`: fine-tune a plan (or every weight) on data and record the run.

    alphasel train --model smollm2 --plan runs/plans/smollm2-blora-k8.json --data stdlib-code
    alphasel train --model smollm2 --scheme alora --k 24 --data stdlib-instruct --method dora
    alphasel train --model minilm --task classification --data stdlib-topics --scheme blora --k 2
    alphasel train --model smollm2 --method full --data stdlib-code --max-steps 50
    alphasel train --resume runs/train/<run-id>
    torchrun --nproc_per_node 2 -m alphasel train ...
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from alphasel.errors import TrainConfigError
from alphasel.training.config import (
    LORA_INITS,
    METHODS,
    REPORTERS,
    SCHEDULERS,
    TASKS,
    TEMPLATES,
    TrainConfig,
)

if TYPE_CHECKING:
    import pandas as pd

    from alphasel.plan import InjectionPlan
    from alphasel.training.record import RunRecord

#: Options that shape an inline plan (--scheme without --plan); dest → make_plan keyword.
PLAN_OPTIONS = {"k": "k", "order": "order", "kinds": "kinds", "unit": "unit",
                "selection_seed": "seed", "start": "start", "rank": "rank",
                "lora_alpha": "lora_alpha", "rank_alloc": "rank_alloc", "beta": "beta",
                "budget": "budget", "budget_from": "budget_from"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune a LoRA plan (or every weight) and record the run",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("model, plan and data")
    what.add_argument("--model", help="hub id, checkpoint dir, .gguf, or smollm2 / minilm")
    what.add_argument("--revision", help="hub branch, tag or commit (hub ids only)")
    what.add_argument("--data", help="stdlib-code, stdlib-instruct, stdlib-topics, an Alpaca "
                      "JSON/JSONL file, a text/code file or directory, a CSV/JSONL of "
                      "text,label, or a hub dataset id")
    what.add_argument("--task", default="causal", help=f"{' or '.join(TASKS)} (default causal)")
    what.add_argument("--template", default="alpaca",
                      help=f"instruction data as {' or '.join(TEMPLATES)} text (default alpaca)")
    what.add_argument("--plan", type=Path, help="an injection plan file (`alphasel plan`)")
    what.add_argument("--method", default="lora", help=f"{', '.join(METHODS)} (default lora)")
    what.add_argument("--quantize", help="4bit: QLoRA on a 4-bit NF4 base model (bitsandbytes)")
    inline = parser.add_argument_group("inline plan (instead of --plan)")
    inline.add_argument("--scheme", help="alora, blora, random, first, last, band or all: "
                        "analyse the model and plan now")
    inline.add_argument("--k", type=int, help="matrices or blocks to choose")
    inline.add_argument("--order", help="high or low alpha first (alora/blora)")
    inline.add_argument("--kinds", help="candidate kinds: attn, mlp, q, k, v, o, gate, up, down")
    inline.add_argument("--unit", help="matrix or block (random)")
    inline.add_argument("--selection-seed", type=int,
                        help="seed of the random scheme's draw (default: --seed)")
    inline.add_argument("--start", type=int, help="first block of the band scheme")
    inline.add_argument("--rank", type=int, help="uniform LoRA rank (default 8)")
    inline.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank)")
    inline.add_argument("--rank-alloc", default="uniform", help="uniform or alpha")
    inline.add_argument("--beta", type=float, help="exponent of --rank-alloc alpha")
    inline.add_argument("--budget", type=int, help="trainable-parameter budget")
    inline.add_argument("--budget-from", type=Path, metavar="PLAN",
                        help="match this plan's trainable-parameter count")
    inline.add_argument("--estimator", default="ks", help="alpha estimator: ks, median, peak")
    inline.add_argument("--downsample", default="none", help="none, common or fixed:RxC")
    knobs = parser.add_argument_group("training")
    knobs.add_argument("--epochs", type=float, default=1.0, help="passes over the data")
    knobs.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    knobs.add_argument("--max-samples", type=int, help="cap on training examples")
    knobs.add_argument("--lr", type=float, help="peak learning rate (default 2e-4; full 2e-5)")
    knobs.add_argument("--scheduler", default="linear", help=", ".join(SCHEDULERS))
    knobs.add_argument("--warmup", type=float, default=0.0,
                       help="warm-up steps, or a fraction below 1 of all steps")
    knobs.add_argument("--batch-size", type=int, default=4, help="examples per device per pass")
    knobs.add_argument("--grad-accum", type=int, default=1, help="passes per optimizer step")
    knobs.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    knobs.add_argument("--fp16", action="store_true", help="float16 mixed precision (CUDA)")
    knobs.add_argument("--grad-checkpointing", action="store_true",
                       help="recompute activations: less memory, more time")
    knobs.add_argument("--max-seq-len", type=int, default=512, help="tokens per sequence")
    knobs.add_argument("--eval-every", type=int, help="evaluate every N steps (default: epoch)")
    knobs.add_argument("--log-every", type=int, default=1, help="log every N steps")
    knobs.add_argument("--save-every", type=int, help="checkpoint every N steps (--resume)")
    knobs.add_argument("--seed", type=int, default=0, help="seed of init, data order, dropout")
    knobs.add_argument("--lora-dropout", type=float, default=0.0, help="adapter dropout")
    knobs.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    knobs.add_argument("--lora-init", default="default",
                       help=f"PEFT init_lora_weights: {', '.join(LORA_INITS)}, pissa_niter_N")
    knobs.add_argument("--report-to", default="none", help=f"comma list: {', '.join(REPORTERS)}")
    knobs.add_argument("--eval-fraction", type=float, default=0.1,
                       help="share of files/records held out")
    knobs.add_argument("--remeasure", default="adapted",
                       help="alpha after each epoch of: adapted, candidates or none")
    knobs.add_argument("--alpha-every", type=int, help="also measure alpha every N steps")
    knobs.add_argument("--reselect", action="store_true",
                       help="after every epoch fold the adapters into the weights, re-plan "
                            "from the new alphas (same scheme, k, budget), train fresh ones")
    knobs.add_argument("--reselect-every", type=int, metavar="N",
                       help="re-select every N steps instead of every epoch")
    record = parser.add_argument_group("record")
    record.add_argument("--out", type=Path, help="run directory (default runs/train/<run-id>)")
    record.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    record.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue an interrupted run from its last checkpoint")
    record.add_argument("--prompts", type=Path, help="prompts for generations.jsonl")
    record.add_argument("--max-new-tokens", type=int, default=48, help="length of generations")
    record.add_argument("--no-generate", action="store_true", help="skip generations.jsonl")
    record.add_argument("--no-save", action="store_true", help="do not save the adapter")
    record.add_argument("--quiet", action="store_true", help="no progress bars")
    # Every option's default, to tell which flags a command line actually gave.
    parser.set_defaults(func=run, defaults={action.dest: action.default
                                            for action in parser._actions})


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        task=args.task, method=args.method, quantize=args.quantize, epochs=args.epochs,
        max_steps=args.max_steps, max_samples=args.max_samples, lr=args.lr,
        scheduler=args.scheduler, warmup=args.warmup, batch_size=args.batch_size,
        grad_accum=args.grad_accum, bf16=args.bf16, fp16=args.fp16,
        grad_checkpointing=args.grad_checkpointing, max_seq_len=args.max_seq_len,
        eval_every=args.eval_every, log_every=args.log_every, save_every=args.save_every,
        seed=args.seed, lora_dropout=args.lora_dropout, weight_decay=args.weight_decay,
        lora_init=args.lora_init, report_to=args.report_to, template=args.template,
        eval_fraction=args.eval_fraction, max_new_tokens=args.max_new_tokens,
        generate=not args.no_generate, save_adapter=not args.no_save,
        remeasure=args.remeasure, alpha_every=args.alpha_every, reselect=args.reselect,
        reselect_every=args.reselect_every)


def _given(args: argparse.Namespace, dests) -> list[str]:
    """The flags among ``dests`` that the command line set to something else than default."""
    return [f"--{dest.replace('_', '-')}" for dest in dests
            if getattr(args, dest) != args.defaults.get(dest)]


def _check(args: argparse.Namespace) -> None:
    """Contradictions between flags, all at once, before anything loads."""
    problems = []
    plan_flags = _given(args, [*PLAN_OPTIONS, "estimator", "downsample"])
    if args.resume is not None:
        given = _given(args, [dest for dest in args.defaults
                              if dest not in ("resume", "quiet", "help", "func", "defaults")])
        if given:
            problems.append("--resume continues a run with the options it started with: drop "
                            + ", ".join(given))
    else:
        if args.model is None:
            problems.append("--model is required (hub id, checkpoint dir, .gguf, smollm2, "
                            "minilm)")
        if args.data is None:
            problems.append("--data is required (e.g. stdlib-code)")
        if args.plan is not None and args.scheme is not None:
            problems.append("give --plan FILE or --scheme to plan inline, not both")
        if args.scheme is None and plan_flags:
            problems.append(f"{', '.join(plan_flags)} shape an inline plan: add --scheme, or "
                            "drop them (a --plan file already decides them)")
        if args.method == "full" and (args.plan is not None or args.scheme is not None):
            problems.append("--method full trains every weight; it takes no --plan/--scheme")
    if problems:
        raise TrainConfigError("; ".join(problems))
    if args.out is not None:  # before minutes of analysis and loading
        from alphasel.training.record import RunWriter

        RunWriter.check_target(args.out, args.overwrite)


def inline_plan(args: argparse.Namespace) -> tuple[pd.DataFrame, InjectionPlan]:
    """Analyse the model and make the plan --scheme asks for: (table, plan)."""
    from alphasel.analyzer import analyze
    from alphasel.planner import make_plan

    table = analyze(args.model, args.estimator, revision=args.revision,
                    downsample=args.downsample, progress=not args.quiet)
    options = {keyword: getattr(args, dest) for dest, keyword in PLAN_OPTIONS.items()}
    if args.scheme == "random" and options["seed"] is None:
        options["seed"] = args.seed  # paired design: the training seed draws the selection
    return table, make_plan(table, args.scheme, **options)


def run(args: argparse.Namespace) -> None:
    from alphasel.training.trainer import resume, train

    _check(args)
    if args.resume is not None:
        record = resume(args.resume, progress=not args.quiet)
    else:
        config = _config(args)  # every option problem before minutes of analysis
        table, plan = inline_plan(args) if args.scheme else (None, args.plan)
        record = train(args.model, plan, args.data, config, revision=args.revision,
                       out=args.out, overwrite=args.overwrite, analysis=table,
                       prompts=args.prompts, progress=not args.quiet, command=args.argv)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary from a torchrun launch
        print(describe(record))


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"  # a diverged (NaN) loss is recorded as null


def describe(record: RunRecord) -> str:
    summary = record.summary or {}
    config = record.config
    what = (f"{config.get('scheme')} k={config.get('k')} {config.get('method')}"
            if config.get("scheme") else config.get("method"))
    lines = [f"run {record.run_id}: {config.get('model_id')} on {config.get('data')} ({what})",
             f"  {summary.get('global_step')} steps, eval loss {_loss(summary.get('eval_loss'))}"
             f" (best {_loss(summary.get('best_eval_loss'))})"
             + (f", accuracy {summary['eval_accuracy']:.3f}" if "eval_accuracy" in summary
                else ""),
             f"  {summary.get('trainable_params'):,} trainable of {summary.get('total_params'):,}"
             f" parameters; {summary.get('tokens_per_s')} tokens/s; peak memory "
             f"{summary.get('peak_memory_mb')} MB; {summary.get('wall_s')} s",
             f"  record: {record.path}"]
    return "\n".join(lines)
