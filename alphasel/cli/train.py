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

from alphasel.cli.options import add_config_options, given_config, given_flags
from alphasel.errors import TrainConfigError
from alphasel.planner import SCHEMES
from alphasel.training.config import TrainConfig
from alphasel.training.task_metrics import EVAL_PREFIX, STDERR_SUFFIX, is_metric

if TYPE_CHECKING:
    import pandas as pd

    from alphasel.plan import InjectionPlan
    from alphasel.training.record import RunRecord

#: Options that shape an inline plan (--scheme without --plan); dest → make_plan keyword.
PLAN_OPTIONS = {"k": "k", "order": "order", "kinds": "kinds", "unit": "unit",
                "selection_seed": "seed", "start": "start", "rank": "rank",
                "lora_alpha": "lora_alpha", "rank_alloc": "rank_alloc", "beta": "beta",
                "budget": "budget", "budget_from": "budget_from", "metric": "metric",
                "fraction": "fraction"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune a plan (adapters, or its matrices in full) or every weight, "
        "and record the run",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("model, plan and data")
    what.add_argument("--model", help="hub id, checkpoint dir, .gguf, or smollm2 / minilm")
    what.add_argument("--revision", help="hub branch, tag or commit (hub ids only)")
    what.add_argument("--data", help="stdlib-code, stdlib-instruct, stdlib-topics, an Alpaca "
                      "JSON/JSONL file, a text/code file or directory, a CSV/JSONL of "
                      "text,label, or a hub dataset id")
    what.add_argument("--plan", type=Path, help="an injection plan file (`alphasel plan`)")
    inline = parser.add_argument_group("inline plan (instead of --plan)")
    inline.add_argument("--scheme", help=f"{', '.join(SCHEMES)}: analyse the model and plan "
                        "now")
    inline.add_argument("--k", type=int, help="matrices or blocks to choose")
    inline.add_argument("--order", help="high or low alpha first (alora/blora)")
    inline.add_argument("--metric", default="alpha",
                        help="the table column alora/blora rank by (default alpha)")
    inline.add_argument("--fraction", type=float,
                        help="spectrum: the share of each kind's matrices, highest SNR first")
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
    training = parser.add_argument_group("training (TrainConfig; defaults as shown)")
    config_dests = add_config_options(training)
    record = parser.add_argument_group("record")
    record.add_argument("--out", type=Path, help="run directory (default runs/train/<run-id>)")
    record.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    record.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue an interrupted run from its last checkpoint")
    record.add_argument("--prompts", type=Path, help="prompts for generations.jsonl")
    record.add_argument("--quiet", action="store_true", help="no progress bars")
    record.add_argument("--verbose", action="store_true",
                        help="also the libraries' own output: their progress bars, log lines "
                        "and warnings")
    parser.set_defaults(func=run, parser=parser, config_dests=config_dests)


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**given_config(args, args.config_dests))


def _check(args: argparse.Namespace) -> None:
    """Contradictions between flags, all at once, before anything loads."""
    problems = []
    plan_flags = given_flags(args.parser, args, among=[*PLAN_OPTIONS, "estimator", "downsample"])
    if args.resume is not None:
        given = given_flags(args.parser, args, skip=("resume", "quiet", "verbose"))
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


def inline_plan(args: argparse.Namespace, seed: int,
                method: str) -> tuple[pd.DataFrame, InjectionPlan]:
    """Analyse the model and make the plan --scheme asks for, counted in ``method``'s currency:
    (table, plan); ``seed``, the training seed, draws the random scheme's selection unless
    --selection-seed does."""
    from alphasel.analyzer import analyze
    from alphasel.planner import make_plan

    table = analyze(args.model, args.estimator, revision=args.revision,
                    downsample=args.downsample, progress=not args.quiet)
    options = {keyword: getattr(args, dest) for dest, keyword in PLAN_OPTIONS.items()}
    if args.scheme == "random" and options["seed"] is None:
        options["seed"] = seed  # paired design: the training seed draws the selection
    return table, make_plan(table, args.scheme, method=method, **options)


def _planned_once(args: argparse.Namespace,
                  config: TrainConfig) -> tuple[pd.DataFrame, InjectionPlan]:
    """:func:`inline_plan` on the main process only: under torchrun the other ranks receive its
    table and plan (one analysis, not one per rank, and one plan for every rank)."""
    from alphasel.training.distributed import agree, start_process

    return agree(start_process(config), lambda: inline_plan(args, config.seed, config.method))


def run(args: argparse.Namespace) -> None:
    from alphasel.training.console import keep_bitsandbytes_unloaded

    _check(args)
    if args.standalone and not _quantizes(args):
        keep_bitsandbytes_unloaded()  # before anything imports PEFT
    from alphasel.training.trainer import resume, train

    if args.resume is not None:
        record = resume(args.resume, progress=not args.quiet, verbose=args.verbose)
    else:
        config = _config(args)  # every option problem before minutes of analysis
        table, plan = _planned_once(args, config) if args.scheme else (None, args.plan)
        record = train(args.model, plan, args.data, config, revision=args.revision,
                       out=args.out, overwrite=args.overwrite, analysis=table,
                       prompts=args.prompts, progress=not args.quiet, verbose=args.verbose,
                       command=args.argv)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary from a torchrun launch
        print(describe(record))


def _quantizes(args: argparse.Namespace) -> bool:
    """Whether the run loads a 4-bit base (a resumed run: as it started)."""
    if args.resume is None:
        return args.quantize is not None
    from alphasel.training.record import RunRecord

    try:
        return RunRecord.load(args.resume).config.get("config", {}).get("quantize") is not None
    except ValueError:  # resume() names the problem
        return True


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"  # a diverged (NaN) loss is recorded as null


def describe(record: RunRecord) -> str:
    summary = record.summary or {}
    config = record.config
    what = (f"{config.get('scheme')} k={config.get('k')} {config.get('method')}"
            if config.get("scheme") else config.get("method"))
    metrics = [f"{key.removeprefix(EVAL_PREFIX)} {value:.4g}" for key, value in summary.items()
               if is_metric(key) and key != "eval_loss" and not key.endswith(STDERR_SUFFIX)
               and isinstance(value, int | float) and not isinstance(value, bool)]
    lines = [f"run {record.run_id}: {config.get('model_id')} on {config.get('data')} ({what})",
             f"  {summary.get('global_step')} steps, eval loss {_loss(summary.get('eval_loss'))}"
             f" (best {_loss(summary.get('best_eval_loss'))})"
             + "".join(f", {metric}" for metric in metrics),
             f"  {summary.get('trainable_params'):,} trainable of {summary.get('total_params'):,}"
             f" parameters; {summary.get('tokens_per_s')} tokens/s; peak memory "
             f"{summary.get('peak_memory_mb')} MB; {summary.get('wall_s')} s",
             f"  record: {record.path}"]
    return "\n".join(lines)
