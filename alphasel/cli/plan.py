"""`alphasel plan`: turn an alpha table into a LoRA injection plan file.

    alphasel plan --scheme blora --k 8
    alphasel plan --scheme alora --k 24 --order low --kinds q,k,v --analysis alpha.csv
    alphasel plan --scheme random --k 8 --unit block --seed 7
    alphasel plan --scheme alora --budget-from runs/plans/PLAN.json
    alphasel plan --scheme blora --k 4 --export peft --out lora_config.json
    alphasel plan --scheme alora --metric snr --k 14 --method unfreeze
    alphasel plan --scheme spectrum --fraction 0.25 --method unfreeze --export axolotl --out s.yml
"""

from __future__ import annotations

import argparse
from itertools import groupby
from pathlib import Path

from alphasel.columns import METRICS
from alphasel.errors import PlanError
from alphasel.exports import EXPORTS, check_export, write_export
from alphasel.plan import (
    DEFAULT_METHOD,
    PLAN_METHODS,
    InjectionPlan,
    PlannedModule,
    default_plan_path,
)
from alphasel.planner import ORDERS, RANK_ALLOCS, SCHEMES, UNITS, make_plan
from alphasel.table import latest_analysis, read_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan", help="choose LoRA modules and ranks from an alpha table",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Values are checked by make_plan, not argparse choices, so a bad one is a one-line error
    # that lists the valid values, like every other alphasel error.
    parser.add_argument("--scheme", required=True, help=f"one of {', '.join(SCHEMES)}")
    parser.add_argument("--k", type=int, help="how many matrices or blocks to choose")
    parser.add_argument("--order", help=f"{' or '.join(ORDERS)} alpha first, for alora/blora "
                        "(default high: least trained first)")
    parser.add_argument("--metric", default="alpha",
                        help=f"the table column alora/blora rank by: {', '.join(METRICS)} "
                        "(default alpha)")
    parser.add_argument("--fraction", type=float,
                        help="spectrum: the share of each kind's matrices, highest SNR first")
    parser.add_argument("--kinds", help="candidate kinds, comma separated: attn, mlp, q, k, v, "
                        "o, qkv, gate, up, down (default: all of them)")
    parser.add_argument("--unit", help=f"{' or '.join(UNITS)}: what random chooses "
                        "(default matrix)")
    parser.add_argument("--seed", type=int, help="seed of the random scheme")
    parser.add_argument("--start", type=int, help="first block of the band scheme")
    parser.add_argument("--method", default=DEFAULT_METHOD,
                        help=f"how the plan's modules train, {', '.join(PLAN_METHODS)}: the "
                        "currency of its budget (an adapter costs r·(rows+cols), an unfrozen "
                        f"matrix rows·cols; default {DEFAULT_METHOD})")
    parser.add_argument("--rank", type=int, help="uniform LoRA rank (default 8)")
    parser.add_argument("--lora-alpha", type=float,
                        help="LoRA alpha of every module (default: its rank, i.e. scaling 1)")
    parser.add_argument("--rank-alloc", default="uniform",
                        help=f"{' or '.join(RANK_ALLOCS)}: alpha gives rank ∝ alpha^beta "
                        "under --budget")
    parser.add_argument("--beta", type=float, help="exponent of --rank-alloc alpha (default 1)")
    parser.add_argument("--budget", type=int, help="total trainable LoRA parameters")
    parser.add_argument("--budget-from", type=Path, metavar="PLAN",
                        help="match this plan's trainable-parameter count within 5%%")
    parser.add_argument("--analysis", type=Path,
                        help="alpha table to plan from (default: the latest analysis)")
    parser.add_argument("--out", type=Path,
                        help="plan file to write (default: runs/plans/<model>-<scheme>-...json); "
                        "with --export, the exported file (required then)")
    parser.add_argument("--export", metavar="TOOL",
                        help=f"write the plan for {', '.join(EXPORTS)} to --out (the plan file "
                        "itself goes to runs/plans/)")
    parser.set_defaults(func=run)


def _format_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def describe(plan: InjectionPlan) -> str:
    """The chosen modules as a table grouped by block, then the trainable count and share."""
    units = {"matrix": "matrices", "block": "blocks"}.get(plan.unit, plan.unit)
    header = (f"plan {plan.scheme} k={plan.k} ({units})"
              + (f" order={plan.order}" if plan.order else "")
              + (f" seed={plan.seed}" if plan.seed is not None else "")
              + (f" start={plan.start}" if plan.start is not None else "")
              + f" kinds={','.join(plan.kinds)}"
              + (" method=unfreeze" if plan.unfreezes else f" ranks={plan.rank_alloc}"))
    lines = [header, f"from {plan.analysis_path or 'an in-memory table'}"
             + (f" (model {plan.model_id})" if plan.model_id else "")]
    show_block_alpha = plan.scheme == "blora"
    lines.append(f"{'block':>5}  {'kinds':<22} {'alpha':<40} "
                 + ("" if plan.unfreezes else "rank")
                 + ("  block alpha" if show_block_alpha else ""))

    def block_key(module: PlannedModule) -> int:
        return -1 if module.block is None else module.block

    for key, group in groupby(plan.modules, key=block_key):
        members = list(group)
        ranks = [module.rank for module in members]
        if len(set(ranks)) == 1:
            ranks = ranks[:1]
        row = (f"{'-' if key < 0 else key:>5}  "
               f"{' '.join(module.kind for module in members):<22} "
               f"{' '.join(_format_number(module.alpha) for module in members):<40} "
               + ("" if plan.unfreezes else " ".join(map(str, ranks))))
        if show_block_alpha:
            row += f"  {_format_number(members[0].selection_alpha)}"
        lines.append(row)
    if plan.trainable_share is not None:
        share = f"{plan.trainable_share:.3%} of the model"
    elif plan.share_of_analysed_params is not None:
        share = f"{plan.share_of_analysed_params:.3%} of the analysed matrices"
    else:
        share = "share unknown"
    lines.append(f"{len(plan.modules)} modules, {plan.trainable_params:,} trainable parameters "
                 f"({share})")
    lines.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    analysis = args.analysis if args.analysis is not None else latest_analysis()
    table = read_table(analysis)
    plan = make_plan(
        table, args.scheme, args.k, order=args.order, kinds=args.kinds, unit=args.unit,
        seed=args.seed, start=args.start, rank=args.rank, lora_alpha=args.lora_alpha,
        rank_alloc=args.rank_alloc, beta=args.beta, budget=args.budget,
        budget_from=args.budget_from, analysis_path=analysis, metric=args.metric,
        fraction=args.fraction, method=args.method)
    paths = save(plan, args.out, args.export)
    print(describe(plan))
    print("\n".join(f"wrote {path}" for path in paths))


def save(plan: InjectionPlan, out: Path | None, export: str | None) -> list[Path]:
    """The plan file, and with ``export`` the exported file first: an export its tool cannot
    express fails before anything is written."""
    if export is None:
        return [plan.save(out if out is not None else default_plan_path(plan))]
    check_export(export)
    if out is None:
        raise PlanError(f"--export {export} needs --out FILE, the file to write it to")
    return [write_export(plan, export, out), plan.save(default_plan_path(plan))]
