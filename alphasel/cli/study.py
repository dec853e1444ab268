"""`alphasel study`: every scheme at one budget, seeds and confidence intervals, one command.

    alphasel study --model smollm2 --data stdlib-code \\
                   --schemes alora,blora,random,first,last,all,full \\
                   --k 3 --unit block --seeds 3 --max-steps 60 --max-seq-len 64
    alphasel study study.toml                      # the same from a spec file
    alphasel study --resume runs/studies/<id>      # finish an interrupted study
    alphasel study --resume runs/studies/<id> --add-seeds 2   # more seeds, only they train
    alphasel study ... --sweep grad_checkpointing=off,on --sweep bf16=off,on
    alphasel study ... --schemes alora,spectrum,random,last --methods lora,unfreeze:k=14:unit=matrix
    alphasel study study.toml --executor ray --address auto --gpus-per-run 1
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from alphasel.cli.compare import add_comparison_options
from alphasel.cli.options import add_config_options, given_config, given_flags
from alphasel.errors import StudyError
from alphasel.study.launch import RETRIES
from alphasel.study.spec import STUDY_OWNED, STUDY_SCHEMES, parse_seeds
from alphasel.study.stats import check_effect

#: The study's own flags that define it (refused beside a spec file or --resume), with the
#: training options (TrainConfig's fields but those the study decides per run, and --task and
#: --method, which are the study's own).
SPEC_FLAGS = ("model", "data", "task", "schemes", "k", "unit", "rank", "seeds", "methods",
              "estimator", "sweep")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study", help="compare selection schemes at one budget over seeds",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", type=Path, help="a study spec (.toml)")
    what = parser.add_argument_group("what to compare")
    what.add_argument("--model", help="hub id, checkpoint dir, .gguf, smollm2 or minilm")
    what.add_argument("--data", help="training data, as `alphasel train --data` takes it")
    what.add_argument("--task", help="causal (default) or classification")
    what.add_argument("--schemes", help=f"comma list of {', '.join(STUDY_SCHEMES)}, each with "
                      "options: alora:order=low, alora:kinds=q,k,v, band:start=8, "
                      "random:reselect")
    what.add_argument("--k", help="units per plan, a comma list (default 3)")
    what.add_argument("--unit", help="what k counts for the budget: block (default) or matrix")
    what.add_argument("--rank", help="LoRA rank, a comma list (default 8)")
    what.add_argument("--seeds", help="number of seeds (default 3), or a comma list of seeds")
    what.add_argument("--methods", "--method", dest="methods",
                      help="comma list of lora (default), dora, rslora, unfreeze: each method "
                      "is its own set of groups at its own budget; a method may carry its own "
                      "k, unit and lr (unfreeze:k=14:unit=matrix:lr=1e-4)")
    what.add_argument("--estimator", help="alpha estimator of the analysis (default ks)")
    what.add_argument("--sweep", action="append", metavar="FIELD=V,V",
                      help="a training option to vary, e.g. grad_checkpointing=off,on "
                           "(repeatable: every combination runs)")
    knobs = parser.add_argument_group("training (every run; TrainConfig, defaults as shown)")
    config_dests = add_config_options(knobs, skip=STUDY_OWNED)
    run = parser.add_argument_group("running")
    run.add_argument("--out", type=Path, help="study directory (default runs/studies/<id>)")
    run.add_argument("--resume", type=Path, metavar="STUDY_DIR",
                     help="run what an interrupted study has not finished")
    run.add_argument("--executor", default="local",
                     help="local (a process per run, default) or ray (a Ray task per run; "
                     "pip install 'alphasel[cluster]')")
    run.add_argument("--parallel", type=int, default=1,
                     help="runs at once (local executor), each on a GPU of its own where there "
                     "are GPUs")
    run.add_argument("--address", default=None,
                     help="ray: the cluster (auto, HOST:PORT, ray://HOST:PORT); default: start "
                     "Ray on this machine")
    run.add_argument("--gpus-per-run", type=float, default=0,
                     help="ray: GPUs each run reserves (default 0: runs train on CPUs)")
    run.add_argument("--cpus-per-run", type=float, default=1,
                     help="ray: CPUs each run reserves (default 1)")
    run.add_argument("--retries", type=int, default=RETRIES, metavar="N",
                     help="start a run whose process (or Ray worker) is killed again, up to N "
                     f"times, before it counts as failed (default {RETRIES})")
    run.add_argument("--add-seeds", type=int, default=None, metavar="M",
                     help="with --resume: M more seeds after the study's last (or --seeds N "
                     "for N in all); only the new seeds' runs train")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    report = parser.add_argument_group("report")
    report.add_argument("--metric", default=None,
                        help="the metric the verdicts and the forest plot compare (default: "
                        "the runs' headline)")
    report.add_argument("--smooth", type=int, default=None, metavar="N",
                        help="moving average over N evaluation points in the loss curves")
    add_comparison_options(report)
    report.add_argument("--plotlyjs", default="directory",
                        help="where the pages find plotly.js: directory (one plotly.min.js "
                        "beside the report, default), inline (each page self-contained) or cdn")
    report.add_argument("--format", default=None, metavar="FORMATS",
                        help="also write each figure as png, svg and/or pdf (comma list; "
                        "kaleido with a Chrome or Chromium it finds)")
    parser.set_defaults(func=run_command, parser=parser, config_dests=config_dests)


def _given(args: argparse.Namespace) -> list[str]:
    return given_flags(args.parser, args, among=[*SPEC_FLAGS, *args.config_dests])


def spec_from_args(args: argparse.Namespace) -> Any:
    """The StudySpec of the command line (a spec file, or the flags)."""
    from alphasel.study.spec import StudySpec, load_spec

    if args.spec is not None:
        return load_spec(args.spec)
    missing = [flag for flag, value in (("--model", args.model), ("--data", args.data),
                                        ("--schemes", args.schemes)) if value is None]
    if missing:
        raise StudyError(f"{', '.join(missing)} required (or give a study spec .toml file)")
    data: dict[str, Any] = {"model": args.model, "data": args.data, "schemes": args.schemes}
    for dest in ("task", "k", "unit", "rank", "methods", "estimator"):
        if getattr(args, dest) is not None:
            data[dest] = getattr(args, dest)
    if args.seeds is not None:
        data["seeds"] = args.seeds
    data["train"] = given_config(args, args.config_dests)
    data["sweep"] = args.sweep or []
    return StudySpec.from_dict(data, source="the command line")


def run_command(args: argparse.Namespace) -> None:
    from alphasel.study.directory import failures, open_study
    from alphasel.study.launch import create_study, extend_study, run_study

    formats = _check(args)
    if args.resume is not None:
        study = args.resume
        spec, _ = open_study(study)
        _check_spec(spec, args.baseline, args.metric)
        if args.seeds is not None or args.add_seeds is not None:
            added = extend_study(study, None if args.seeds is None else parse_seeds(args.seeds),
                                 args.add_seeds)
            if not args.quiet:
                print(f"study {study}: {len(added)} new run(s) for the added seeds", flush=True)
    else:
        spec = spec_from_args(args)
        _check_spec(spec, args.baseline, args.metric)
        study = create_study(spec, args.out, progress=not args.quiet)
    states = _run(study, args, run_study)
    counts = {state: list(states.values()).count(state) for state in ("complete", "failed")}
    print(_table(study, args.metric, tuple(args.baseline), args.effect))
    from alphasel.plots.report import write_report

    report_path = write_report(study, smooth=args.smooth, plotlyjs=args.plotlyjs,
                               formats=formats, baselines=tuple(args.baseline),
                               effect=args.effect, metric=args.metric)
    print(f"study: {study} ({counts['complete']} of {len(states)} runs complete)")
    print(f"report: {report_path}")
    failed = failures(study)
    if failed:
        shown = "; ".join(f"{run}: {message}" for run, message in list(failed.items())[:3])
        raise StudyError(f"{len(failed)} run(s) failed ({shown}); fix the cause and run "
                         f"`alphasel study --resume {study}` to retry them")


def _check(args: argparse.Namespace) -> tuple[str, ...]:
    """Every option problem before anything is analysed, trained or written; returns the static
    figure formats asked for."""
    from alphasel.plots.comparison import check_smooth
    from alphasel.plots.output import check_plotlyjs
    from alphasel.plots.report import parse_formats
    from alphasel.study.launch import EXECUTORS, check_retries

    given = _given(args)
    if args.resume is not None:
        growing = [flag for flag in given if flag != "--seeds"]
        if growing or args.spec or args.out:
            raise StudyError("--resume continues a study with the spec it started with (it "
                             "may only grow: --seeds N or --add-seeds M): drop "
                             + ", ".join([*growing, *(["SPEC"] if args.spec else []),
                                          *(["--out"] if args.out else [])]))
        if args.seeds is not None and args.add_seeds is not None:
            raise StudyError("give --seeds N (all the study should have) or --add-seeds M "
                             "(more), not both")
    elif args.add_seeds is not None:
        raise StudyError("--add-seeds grows a study: use it with --resume STUDY_DIR (a new "
                         "study takes --seeds)")
    if args.spec is not None and given:
        raise StudyError(f"the spec file decides the study: drop {', '.join(given)} (or edit "
                         f"{args.spec})")
    check_smooth(args.smooth)
    check_retries(args.retries)
    check_plotlyjs(args.plotlyjs)
    check_effect(args.effect)
    formats = parse_formats(args.format)
    if args.executor not in EXECUTORS:
        raise StudyError(f"--executor {args.executor}: use one of {', '.join(EXECUTORS)}")
    if args.executor == "ray":
        from alphasel.study.ray_executor import check_address, import_ray

        import_ray()  # before minutes of analysis and planning
        check_address(args.address)
    elif args.address is not None or args.gpus_per_run or args.cpus_per_run != 1:
        raise StudyError("--address, --gpus-per-run and --cpus-per-run apply to --executor ray")
    else:
        from alphasel.study.local import gpu_slots

        gpu_slots(args.parallel)  # refuses more runs at once than GPUs, before the analysis
    return formats


def _check_spec(spec: Any, baselines: list[str], metric: str | None) -> None:
    """Refuse, before any run, a --baseline that names no scheme of the study, a --metric its
    runs will not have, and harness tasks that cannot run (lm-eval missing, a task unknown or
    its data not cached)."""
    from alphasel.training.harness import check_harness
    from alphasel.training.task_metrics import check_metric

    labels = [scheme.label for scheme in spec.schemes]
    unknown = [label for label in baselines if label not in labels]
    if unknown:
        raise StudyError(f"--baseline {', '.join(unknown)}: the study has no such scheme (it "
                         f"has {', '.join(labels)}): name one of those")
    config = spec.config(spec.seeds[0])
    check_metric(metric, config.task, config.eval_harness)
    check_harness(config.eval_harness, config.eval_harness_include, config.eval_fraction)


def _run(study: Path, args: argparse.Namespace, run_study: Any) -> dict:
    """Run what is not complete with a progress bar over the runs (done / total, elapsed, and
    what is left estimated from the finished runs) and a line per finished run."""
    from tqdm import tqdm

    from alphasel.study.launch import pending

    _, todo = pending(study)
    say = (lambda text: None) if args.quiet else (lambda text: tqdm.write(text))
    say(f"study {study}: {len(todo)} run(s) to train")
    with tqdm(total=len(todo), unit="run", desc="runs", disable=args.quiet,
              dynamic_ncols=True) as bar:
        def report(entry: Any, state: str, seconds: float) -> None:
            bar.update(1)
            say(f"  {entry.run_id}: {state} ({seconds:.0f} s)")

        return run_study(study, executor=args.executor, parallel=args.parallel, report=report,
                         address=args.address, gpus_per_run=args.gpus_per_run,
                         cpus_per_run=args.cpus_per_run, retries=args.retries)


def _table(study: Path, metric: str | None = None, baselines: tuple[str, ...] = (),
           effect: float | None = None) -> str:
    """The comparison table, written to the study's table.csv and returned for printing with
    its verdict lines."""
    from alphasel.cli.compare import format_table, format_verdicts
    from alphasel.study.collect import collect_study
    from alphasel.study.directory import TABLE_FILE
    from alphasel.study.stats import comparison_table
    from alphasel.table import write_table

    table = comparison_table(collect_study(study), metric, baselines, effect)
    write_table(table, study / TABLE_FILE)
    return format_table(table) + "\n" + format_verdicts(table)
