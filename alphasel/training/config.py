"""TrainConfig: every training option, validated all at once.

    config = TrainConfig(method="dora", epochs=3, lr=1e-4, max_seq_len=256)

Each field's docstring says what it does and which ``alphasel train`` flag sets it; the
command-line options of ``alphasel train`` and ``alphasel study`` are built from them
(:func:`config_options`), so a field's name, type, default and help live here only. A bad value
or a contradiction raises one :class:`TrainConfigError` that lists every problem, each naming
its flag.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from alphasel.errors import TrainConfigError
from alphasel.plan import PLAN_METHODS, UNFREEZE
from alphasel.training.precision import DTYPES, half_autocast

TASKS = ("causal", "classification", "regression")
#: Tasks a model learns with a new sequence head over the text (no language-model loss).
HEAD_TASKS = ("classification", "regression")
METHODS = (*PLAN_METHODS, "full")
#: Methods whose trained parameters are the model's own weights (no adapters).
FULL_WEIGHT_METHODS = (UNFREEZE, "full")
#: Parts of a model --also trains in full beside an unfreeze plan's matrices.
ALSO_PARTS = ("embed", "head", "norm")
QUANTIZE = ("4bit",)
TEMPLATES = ("alpaca", "chat")
#: What alpha is measured on after every epoch (--remeasure).
REMEASURE = ("adapted", "candidates", "none")
#: transformers' scheduler names (SchedulerType) offered by --scheduler: those that need no
#: extra arguments (cosine_with_min_lr and warmup_stable_decay do).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt")
#: transformers' logging integrations offered by --report-to.
REPORTERS = ("none", "tensorboard", "wandb", "mlflow", "all")
#: PEFT's init_lora_weights values offered by --lora-init (``default`` is PEFT's True:
#: Kaiming-uniform A, zero B, so the adapted model starts equal to the base model). loftq,
#: eva and corda are left out: each needs a data-driven step of its own before training.
LORA_INITS = ("default", "gaussian", "pissa", "olora", "orthogonal")
#: Inits that decompose the base weight, which a 4-bit base cannot give them.
WEIGHT_INITS = ("pissa", "olora")
_PISSA_NITER = re.compile(r"^pissa_niter_\d+$")
#: Default learning rates: adapters tolerate (and need) a larger step than full fine-tuning.
DEFAULT_ADAPTER_LR = 2e-4
DEFAULT_FULL_LR = 2e-5


@dataclass
class TrainConfig:
    """How to train: method, schedule, batch, precision, data handling and record options."""

    task: str = "causal"
    """``causal`` (language modelling, instruction tuning), ``classification`` or
    ``regression`` (a one-output head trained with MSE, e.g. STS-B) (--task)."""
    method: str = "lora"
    """``lora``, ``dora``, ``rslora`` (PEFT adapters on the plan's modules), ``unfreeze``
    (the plan's matrices, and their biases, train in full; everything else frozen) or
    ``full`` (every weight trains; no plan) (--method)."""
    also: list[str] = field(default_factory=list)
    """With --method unfreeze, parts that train in full beside the plan's matrices: ``embed``
    (the embeddings), ``head`` (the output layer) and ``norm`` (every normalisation layer), a
    comma list; Spectrum always unfreezes embed and head. They count in trainable_params
    (--also)."""
    quantize: str | None = None
    """``4bit``: load the base model in 4-bit NF4 through bitsandbytes (QLoRA) (--quantize)."""
    epochs: float = 1.0
    """Passes over the training split; ignored when ``max_steps`` is set (--epochs)."""
    max_steps: int | None = None
    """Optimizer steps to train, overriding ``epochs`` (--max-steps)."""
    max_samples: int | None = None
    """Cap on training examples (the eval split is capped in proportion) (--max-samples)."""
    lr: float | None = None
    """Peak learning rate; None → 2e-4 for adapters, 2e-5 for weights trained in full
    (unfreeze, full) (--lr)."""
    scheduler: str = "linear"
    """Learning-rate schedule, transformers' names (--scheduler)."""
    warmup: float = 0.0
    """Warm-up: a whole number of steps, or a fraction in [0, 1) of all steps (--warmup)."""
    batch_size: int = 4
    """Examples per device per forward pass (--batch-size)."""
    grad_accum: int = 1
    """Forward passes accumulated per optimizer step (--grad-accum)."""
    bf16: bool = False
    """bfloat16 mixed precision (--bf16)."""
    fp16: bool = False
    """float16 mixed precision (--fp16)."""
    dtype: str = "auto"
    """What the frozen base is held in: ``auto`` (the precision of --bf16/--fp16; without them
    a half-precision checkpoint's own dtype on a GPU, float32 on a CPU), ``float32``,
    ``bfloat16`` or ``float16``; whatever trains is always float32 (--dtype)."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, more time (--grad-checkpointing)."""
    max_seq_len: int = 512
    """Longest sequence in tokens: code is chunked to it, longer examples are truncated
    (--max-seq-len)."""
    eval_every: int | None = None
    """Evaluate every N optimizer steps; None → after every epoch (and always at the end)
    (--eval-every)."""
    log_every: int = 1
    """Write a metrics.jsonl line every N optimizer steps (--log-every)."""
    save_every: int | None = None
    """Keep a resumable Trainer checkpoint every N steps (--save-every)."""
    seed: int = 0
    """Seed of initialisation, data order, dropout and the random scheme's draw (--seed)."""
    eval_seed: int = 0
    """Seed of the evaluation sample: which held-out examples a capped eval split keeps, and
    their order; independent of --seed, so runs of different seeds evaluate on the same
    examples (--eval-seed)."""
    lora_dropout: float = 0.0
    """Dropout on the adapter input (--lora-dropout)."""
    weight_decay: float = 0.0
    """AdamW weight decay (--weight-decay)."""
    lora_init: str = "default"
    """PEFT's init_lora_weights: default, gaussian, pissa, pissa_niter_N, olora, orthogonal,
    loftq, eva, corda (--lora-init)."""
    ddp_timeout: int = 1800
    """Seconds a process of a multi-process run waits for the others (the main process's
    alpha measurement, generations, analysis) before the job fails (--ddp-timeout)."""
    report_to: list[str] = field(default_factory=lambda: ["none"])
    """transformers' logging integrations: tensorboard, wandb, mlflow, all or none
    (--report-to)."""
    template: str = "alpaca"
    """How instruction data becomes text: ``alpaca`` or ``chat`` (the tokenizer's chat
    template) (--template)."""
    eval_fraction: float = 0.1
    """Share of files (or records) held out for evaluation, when no --eval-split names a split
    of its own; with --max-samples also the proportion the eval cap keeps, a named split's too
    (--eval-fraction)."""
    train_split: str = "train"
    """The data set's split to train on (a hub data set or a data set directory) (--train-split)."""
    eval_split: str | None = None
    """A split of the data set to evaluate on (GLUE's ``validation``); none: --eval-fraction of
    the train split is held out (--eval-split)."""
    text_column: list[str] = field(default_factory=list)
    """The text column of classification or regression data, or two for sentence pairs
    (``sentence1,sentence2``), a comma list; default ``text`` (--text-column)."""
    label_column: str = "label"
    """The label column of classification or regression data (--label-column)."""
    eval_harness: list[str] = field(default_factory=list)
    """lm-evaluation-harness tasks run on the model in memory before and after training, a
    comma list (``stdlib-mc`` is alphasel's own, offline); needs ``alphasel[eval]``
    (--eval-harness)."""
    eval_harness_limit: int | None = None
    """Examples per harness task (default: all) (--eval-harness-limit)."""
    eval_harness_fewshot: int | None = None
    """Few-shot examples per harness question (default: each task's own)
    (--eval-harness-fewshot)."""
    eval_harness_include: str | None = None
    """A directory of your own lm-eval task YAMLs, with local data (--eval-harness-include)."""
    max_new_tokens: int = 48
    """Length of the greedy completions in generations.jsonl (--max-new-tokens)."""
    generate: bool = True
    """Write generations.jsonl (before/after completions) for language models (--no-generate)."""
    save_adapter: bool = True
    """Save the trained adapter (or full weights) under adapter/ (--no-save)."""
    remeasure: str = "adapted"
    """Alpha after every epoch of: ``adapted`` modules, every ``candidates`` matrix of the
    plan's kinds, or ``none`` (--remeasure)."""
    alpha_every: int | None = None
    """Also measure alpha every N optimizer steps (--alpha-every)."""
    reselect: bool = False
    """Re-select after every epoch: fold the adapters into the base weights, re-measure every
    candidate, re-plan with the plan's own recipe and train fresh adapters (--reselect).
    Alpha is then measured on every candidate (the re-plan needs them)."""
    reselect_every: int | None = None
    """Re-select every N optimizer steps instead of after every epoch; implies ``reselect``
    (--reselect-every)."""

    def __post_init__(self) -> None:
        self.report_to, self.also = _comma_list(self.report_to), _comma_list(self.also)
        self.text_column = _comma_list(self.text_column)
        self.eval_harness = _comma_list(self.eval_harness)
        problems = self.problems()
        if problems:
            raise TrainConfigError("; ".join(problems))
        if self.lr is None:
            self.lr = DEFAULT_FULL_LR if self.method in FULL_WEIGHT_METHODS \
                else DEFAULT_ADAPTER_LR

    def problems(self) -> list[str]:
        """Every invalid value and contradiction, each naming its flag."""
        problems: list[str] = []

        def one_of(value: Any, allowed: tuple, flag: str) -> None:
            if value not in allowed:
                problems.append(f"{flag} {value!r} is not one of {', '.join(allowed)}")

        def whole(value: Any, flag: str, least: int, optional: bool = False) -> None:
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                problems.append(f"{flag} {value!r} must be a whole number ≥ {least}")

        def number(value: Any, flag: str, low: float, high: float | None = None,
                   open_low: bool = False, open_high: bool = False) -> None:
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                problems.append(f"{flag} {value!r} must be a number")
                return
            if value < low or (open_low and value == low) or (
                    high is not None and (value > high or (open_high and value == high))):
                span = (f"{'(' if open_low else '['}{low:g}, "
                        f"{'∞' if high is None else format(high, 'g')}"
                        f"{')' if open_high or high is None else ']'}")
                problems.append(f"{flag} {value!r} must lie in {span}")

        one_of(self.task, TASKS, "--task")
        one_of(self.method, METHODS, "--method")
        if self.quantize is not None:
            one_of(self.quantize, QUANTIZE, "--quantize")
            if self.method in FULL_WEIGHT_METHODS:
                problems.append(f"--quantize 4bit trains adapters on a frozen 4-bit model: "
                                f"4-bit weights cannot be trained in full (--method "
                                f"{self.method}); choose --method lora, dora or rslora")
        unknown_parts = [part for part in self.also if part not in ALSO_PARTS]
        if unknown_parts:
            problems.append(f"--also {','.join(unknown_parts)}: name parts among "
                            f"{', '.join(ALSO_PARTS)}")
        elif self.also and self.method != UNFREEZE:
            problems.append(f"--also trains parts in full beside an unfreeze plan's matrices; "
                            f"it contradicts --method {self.method}: use --method unfreeze")
        elif len(set(self.also)) != len(self.also):
            problems.append(f"--also {','.join(self.also)} names a part twice")
        one_of(self.template, TEMPLATES, "--template")
        if len(self.text_column) > 2:
            problems.append(f"--text-column {','.join(self.text_column)}: one column, or two "
                            "for sentence pairs")
        elif self.text_column and self.task not in HEAD_TASKS:
            problems.append("--text-column and --label-column name the columns of "
                            "classification or regression data: use them with --task "
                            "classification or regression")
        if self.eval_harness and self.task != "causal":
            problems.append(f"--eval-harness evaluates language models; --task {self.task} "
                            "trains a head: drop --eval-harness")
        whole(self.eval_harness_limit, "--eval-harness-limit", 1, optional=True)
        whole(self.eval_harness_fewshot, "--eval-harness-fewshot", 0, optional=True)
        if not self.eval_harness and (self.eval_harness_limit is not None
                                      or self.eval_harness_fewshot is not None
                                      or self.eval_harness_include is not None):
            problems.append("--eval-harness-limit, -fewshot and -include shape --eval-harness: "
                            "add --eval-harness TASKS")
        one_of(self.scheduler, SCHEDULERS, "--scheduler")
        if not (self.lora_init in LORA_INITS or _PISSA_NITER.match(str(self.lora_init))):
            problems.append(f"--lora-init {self.lora_init!r} is not one of "
                            f"{', '.join(LORA_INITS)} or pissa_niter_N")
        elif self.lora_init != "default" and self.method in FULL_WEIGHT_METHODS:
            problems.append(f"--lora-init applies to adapters, not --method {self.method}")
        elif self.quantize and str(self.lora_init).startswith(WEIGHT_INITS):
            problems.append(f"--lora-init {self.lora_init} decomposes the base weights, which "
                            "--quantize 4bit leaves packed: use default or gaussian")
        unknown = [item for item in self.report_to if item not in REPORTERS]
        if unknown or not self.report_to:
            problems.append(f"--report-to {','.join(self.report_to) or '(empty)'} is not a "
                            f"comma list of {', '.join(REPORTERS)}")
        elif len(self.report_to) > 1 and ({"none", "all"} & set(self.report_to)):
            problems.append("--report-to none and all stand alone: drop the other names")
        number(self.epochs, "--epochs", 0, open_low=True)
        whole(self.max_steps, "--max-steps", 1, optional=True)
        whole(self.max_samples, "--max-samples", 1, optional=True)
        if self.lr is not None:
            number(self.lr, "--lr", 0, open_low=True)
        number(self.warmup, "--warmup", 0)
        if isinstance(self.warmup, float) and self.warmup >= 1 and not self.warmup.is_integer():
            problems.append(f"--warmup {self.warmup} must be a whole number of steps or a "
                            "fraction below 1")
        whole(self.batch_size, "--batch-size", 1)
        whole(self.grad_accum, "--grad-accum", 1)
        if self.bf16 and self.fp16:
            problems.append("--bf16 and --fp16 exclude each other: choose one")
        one_of(self.dtype, DTYPES, "--dtype")
        autocast = half_autocast(self.dtype)
        if autocast and self.method == "full":
            problems.append(f"--dtype {self.dtype} holds a frozen base in half precision; "
                            "--method full trains every weight, which is held in float32: "
                            "drop --dtype")
        elif autocast and (self.bf16 or self.fp16) and not getattr(self, autocast):
            problems.append(f"--dtype {self.dtype} computes in {autocast} autocast; it "
                            f"contradicts --{'fp16' if self.fp16 else 'bf16'}: use --{autocast}")
        whole(self.ddp_timeout, "--ddp-timeout", 1)
        whole(self.max_seq_len, "--max-seq-len", 8)
        whole(self.eval_every, "--eval-every", 1, optional=True)
        whole(self.log_every, "--log-every", 1)
        whole(self.save_every, "--save-every", 1, optional=True)
        whole(self.seed, "--seed", 0)
        whole(self.eval_seed, "--eval-seed", 0)
        number(self.lora_dropout, "--lora-dropout", 0, 1, open_high=True)
        number(self.weight_decay, "--weight-decay", 0)
        number(self.eval_fraction, "--eval-fraction", 0, 0.5, open_low=True)
        whole(self.max_new_tokens, "--max-new-tokens", 1)
        one_of(self.remeasure, REMEASURE, "--remeasure")
        whole(self.alpha_every, "--alpha-every", 1, optional=True)
        if self.alpha_every and self.remeasure == "none":
            problems.append("--alpha-every measures alpha; it contradicts --remeasure none")
        whole(self.reselect_every, "--reselect-every", 1, optional=True)
        if self.reselecting:
            flag = "--reselect-every" if self.reselect_every else "--reselect"
            if self.method == "full":
                problems.append(f"{flag} re-chooses the trained modules; --method full trains "
                                "every weight: choose --method lora, dora, rslora or unfreeze")
            if self.quantize:
                problems.append(f"{flag} folds the adapters into the base weights, which "
                                "--quantize 4bit keeps packed: drop one of them")
            if self.remeasure == "none":
                problems.append(f"{flag} re-plans from the alpha of every candidate; it "
                                "contradicts --remeasure none")
            if self.save_every:
                problems.append(f"{flag} cannot be combined with --save-every yet: a "
                                "re-selecting run is not resumable (its checkpoints lack the "
                                "folded base weights)")
        return problems

    @property
    def reselecting(self) -> bool:
        """Whether the run re-selects its adapted modules (--reselect or --reselect-every)."""
        return bool(self.reselect or self.reselect_every)

    @property
    def warmup_steps(self) -> float | int:
        """The value transformers' ``warmup_steps`` takes: steps, or a ratio below 1."""
        return int(self.warmup) if self.warmup >= 1 else float(self.warmup)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"unknown training option(s) {', '.join(unknown)}: this "
                                   "alphasel reads " + ", ".join(sorted(known)))
        return cls(**data)


def _comma_list(value: str | list[str]) -> list[str]:
    """A list field given as ``"a,b"`` (the command line's form) or as a list."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


#: TrainConfig fields that only shape the record, not the training: runs that differ in them
#: are still replicates of one another.
RECORD_ONLY_FIELDS = frozenset({"report_to", "generate", "max_new_tokens", "save_adapter",
                                "save_every", "log_every", "eval_every", "remeasure",
                                "alpha_every", "ddp_timeout", "eval_harness",
                                "eval_harness_limit", "eval_harness_fewshot",
                                "eval_harness_include"})


@dataclass(frozen=True)
class ConfigOption:
    """A config field as a command-line option, all of it read from the field."""

    field: str
    """The field's name (the option's argparse dest)."""
    flag: str
    """The flag its docstring names: ``--max-steps``, or ``--no-generate`` for a field that is
    on by default."""
    type: type | None
    """What the flag's value is read as (int, float, str); None for an on/off flag."""
    default: Any
    """The field's default."""
    help: str
    """The field's docstring without its flag."""


_FLAG = re.compile(r"\s*\((--[a-z0-9][a-z0-9-]*)\)")


def _docstrings(cls: type) -> dict[str, str]:
    """Field name → the string literal written under it in the class body."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    found = {}
    for statement, following in zip(body, body[1:], strict=False):
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            found[statement.target.id] = following.value.value
    return found


def _value_type(hint: Any) -> type | None:
    """int/float/str for a field's type (``int | None`` → int; a list is a comma list);
    None for bool, an on/off flag."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint is bool:
        return None
    if typing.get_origin(hint) is list:
        return str
    return hint


def options_of(cls: type) -> list[ConfigOption]:
    """Every field of the dataclass ``cls`` as a command-line option, in field order: the flag
    named in its docstring as ``(--flag)``. Raises TypeError for a field whose docstring names
    no flag, or names one twice."""
    docs = _docstrings(cls)
    hints = typing.get_type_hints(cls)
    options = []
    for item in fields(cls):
        flags = _FLAG.findall(docs.get(item.name, ""))
        if len(flags) != 1:
            raise TypeError(f"{cls.__name__}.{item.name}: its docstring must name its "
                            f"command-line flag once, as (--flag); found {flags or 'none'}")
        default = item.default if item.default is not MISSING else item.default_factory()
        help_text = " ".join(_FLAG.sub("", docs[item.name]).split())
        options.append(ConfigOption(item.name, flags[0], _value_type(hints[item.name]), default,
                                    help_text))
    return options


@functools.cache
def config_options() -> tuple[ConfigOption, ...]:
    """TrainConfig's fields as the options of ``alphasel train`` (and ``alphasel study``)."""
    return tuple(options_of(TrainConfig))
