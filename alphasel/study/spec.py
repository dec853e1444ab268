"""A study's specification: which schemes, at which k and rank, with which seeds and training
options, from command-line flags or a TOML file (the same fields either way).

    model = "smollm2"
    data = "stdlib-code"
    schemes = ["alora", "blora", "random", "first", "last", "all", "full"]
    methods = ["lora", "unfreeze:k=14:unit=matrix"]
    k = [3]
    unit = "block"
    seeds = 3

    [train]            # TrainConfig fields shared by every run
    max_steps = 60
    max_seq_len = 64

    [sweep]            # every combination becomes its own group of runs
    grad_checkpointing = [false, true]

A scheme may carry options after a colon: ``alora:order=low``, ``alora:kinds=q,k,v``,
``all:kinds=attn``, ``band:start=8``, ``random:reselect``, several joined by ``:``
(``random:unit=matrix:reselect``). ``full`` (every weight trains) is a scheme here too.

Each method (``lora``, ``dora``, ``rslora``, ``unfreeze``) is its own set of groups with its own
budget, counted in its own currency; a method may carry its own ``k`` and ``unit``
(``unfreeze:k=14:unit=matrix``: fourteen matrices' worth of parameters) instead of the study's.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from alphasel.columns import METRICS
from alphasel.errors import StudyError, TrainConfigError
from alphasel.plan import DEFAULT_METHOD, PLAN_METHODS, UNFREEZE
from alphasel.planner import ALPHA_SCHEMES, SCHEMES, UNITS, parse_kinds
from alphasel.training.config import TrainConfig

STUDY_SCHEMES = (*SCHEMES, "full")
#: The unmatched upper baselines: they train more than the budget by design.
UNMATCHED = ("all", "full")
#: Options a scheme may carry, and whether each takes a value.
SCHEME_OPTIONS = {"order": True, "kinds": True, "unit": True, "start": True,
                  "rank_alloc": True, "beta": True, "metric": True, "reselect": False}
#: TrainConfig fields a study decides itself (per run), not [train] or --sweep.
STUDY_OWNED = {"seed", "reselect", "task", "method"}
#: Options a method may carry (``unfreeze:k=14:unit=matrix:lr=1e-4``), each with a value, and
#: what the value is read as.
METHOD_OPTIONS = {"k": int, "unit": str, "lr": float}
_TRUE, _FALSE = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


@dataclass(frozen=True)
class SchemeSpec:
    """A scheme with its options, e.g. ``alora:order=low``."""

    scheme: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        parts = [self.scheme]
        for key, value in self.options:
            parts.append(key if value is True else f"{key}={value}")
        return ":".join(parts)

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    @classmethod
    def parse(cls, text: str) -> SchemeSpec:
        """``alora:order=low:kinds=q,k,v`` → SchemeSpec('alora', (('order', 'low'), ...))."""
        name, items = _named_options(text, "scheme", STUDY_SCHEMES, SCHEME_OPTIONS)
        spec = cls(name, tuple((key, True if value is True else _option_value(key, value, text))
                               for key, value in items))
        spec.check()
        return spec

    def check(self) -> None:
        """Options that contradict the scheme (the planner checks the rest when planning)."""
        given = dict(self.options)
        if self.scheme == "full" and given:
            raise StudyError(f"scheme '{self.label}': full fine-tuning takes no options")
        if "order" in given and self.scheme not in ("alora", "blora"):
            raise StudyError(f"scheme '{self.label}': order applies to alora and blora")
        if "start" in given and self.scheme != "band":
            raise StudyError(f"scheme '{self.label}': start applies to band")
        if self.scheme == "band" and "start" not in given:
            raise StudyError("scheme band needs its first block: write band:start=N")
        if "unit" in given and self.scheme != "random":
            raise StudyError(f"scheme '{self.label}': unit applies to random")
        if "metric" in given and self.scheme not in ALPHA_SCHEMES:
            raise StudyError(f"scheme '{self.label}': metric applies to "
                             f"{' and '.join(ALPHA_SCHEMES)}")


def _named_options(text: str, kind: str, names: tuple[str, ...],
                   takes_value: dict[str, Any]) -> tuple[str, list[tuple[str, str | bool]]]:
    """``name:key=value:flag`` → (name, [(key, "value"), (flag, True)]) for a scheme or a
    method (``kind``): the name one of ``names``, each key one of ``takes_value``'s and written
    with a value exactly when it takes one (a truthy entry there)."""
    name, *items = [item.strip() for item in str(text).split(":")]
    if name not in names:
        extra = " (full fine-tuning is the scheme 'full')" if kind == "method" else ""
        raise StudyError(f"unknown {kind} '{name}' in --{kind}s: use {', '.join(names)}{extra}")
    options: list[tuple[str, str | bool]] = []
    for item in items:
        key, has_value, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in takes_value:
            raise StudyError(f"unknown option '{key}' in {kind} '{text}': use "
                             f"{', '.join(takes_value)}")
        if bool(takes_value[key]) != bool(has_value) or (has_value and not value.strip()):
            form = f"{key}=VALUE" if takes_value[key] else key
            raise StudyError(f"{kind} '{text}': write the option as {form}")
        options.append((key, value.strip() if has_value else True))
    return name, options


def _option_value(key: str, value: str, text: str) -> Any:
    try:
        if key == "start":
            return int(value)
        if key == "beta":
            return float(value)
        if key == "kinds":
            parse_kinds(value)  # checked now, kept as written (it is part of the label)
            return value
    except (ValueError, TypeError) as err:
        raise StudyError(f"scheme '{text}': {key}={value}: {err}") from None
    if key == "metric" and value not in METRICS:
        raise StudyError(f"scheme '{text}': metric must be one of {', '.join(METRICS)}")
    if key == "unit" and value not in UNITS:
        raise StudyError(f"scheme '{text}': unit must be one of {', '.join(UNITS)}")
    return value


@dataclass(frozen=True)
class MethodSpec:
    """A method the study's schemes train with, the budget it is matched to when it is not
    the study's own (``k`` units of ``unit``), and its learning rate when not the study's."""

    method: str
    k: int | None = None
    unit: str | None = None
    lr: float | None = None

    @property
    def label(self) -> str:
        return ":".join([self.method, *(f"{key}={getattr(self, key)}" for key in METHOD_OPTIONS
                                         if getattr(self, key) is not None)])

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        """``unfreeze:k=14:unit=matrix`` → MethodSpec('unfreeze', 14, 'matrix')."""
        name, items = _named_options(text, "method", PLAN_METHODS, METHOD_OPTIONS)
        options: dict[str, Any] = {}
        for key, value in items:
            try:
                options[key] = METHOD_OPTIONS[key](value)
            except ValueError:
                raise StudyError(f"method '{text}': {key}={value} is not a "
                                 f"{'whole number' if key == 'k' else 'number'}") from None
            if key == "unit" and value not in UNITS:
                raise StudyError(f"method '{text}': unit must be one of {', '.join(UNITS)}")
            if key in ("k", "lr") and not options[key] > 0:
                raise StudyError(f"method '{text}': {key} must be above 0")
        return cls(name, **options)


def parse_methods(value: str | list[str]) -> list[MethodSpec]:
    """Methods from ``lora,unfreeze:k=14`` or a list of such strings, each once."""
    pieces = value.split(",") if isinstance(value, str) else [str(item) for item in value]
    methods = [MethodSpec.parse(piece) for piece in pieces if piece.strip()]
    if not methods:
        raise StudyError("--methods is empty: give e.g. lora,unfreeze")
    names = [method.method for method in methods]
    if len(set(names)) != len(names):
        raise StudyError(f"--methods lists a method twice: {', '.join(names)}")
    return methods


def parse_schemes(value: str | list[str]) -> list[SchemeSpec]:
    """Schemes from ``alora,blora,alora:kinds=q,k,v`` or a list of such strings.

    Commas separate schemes and also a ``kinds`` list: after ``kinds=``, a piece that names no
    scheme continues the list (kind names and scheme names never coincide)."""
    pieces = value.split(",") if isinstance(value, str) else [str(item) for item in value]
    joined: list[str] = []
    for piece in (piece.strip() for piece in pieces):
        if not piece:
            continue
        if joined and joined[-1].split(":")[-1].startswith("kinds=") and (
                piece.split(":")[0] not in STUDY_SCHEMES):
            joined[-1] += "," + piece
        else:
            joined.append(piece)
    specs = [SchemeSpec.parse(text) for text in joined]
    labels = [spec.label for spec in specs]
    if not specs:
        raise StudyError("--schemes is empty: give e.g. alora,blora,random,first,last,all,full")
    if len(set(labels)) != len(labels):
        raise StudyError(f"--schemes lists a scheme twice: {', '.join(labels)}")
    return specs


def parse_sweep(items: list[str] | dict[str, Any]) -> dict[str, list[Any]]:
    """``["bf16=off,on", "grad_checkpointing=off,on"]`` (or a TOML table) → field → values."""
    sweep: dict[str, list[Any]] = {}
    pairs = items.items() if isinstance(items, dict) else [
        item.partition("=")[::2] for item in items]
    known = {item.name: item for item in fields(TrainConfig)}
    for key, values in pairs:
        name = str(key).strip().replace("-", "_")
        if name not in known or name in STUDY_OWNED:
            raise StudyError(f"--sweep {key}: not a training option a study can sweep (use "
                             f"one of {', '.join(sorted(set(known) - STUDY_OWNED))})")
        listed = values if isinstance(values, list) else str(values).split(",")
        parsed = [_field_value(name, value) for value in listed if str(value).strip() != ""]
        if not parsed:
            raise StudyError(f"--sweep {name}= needs values, e.g. --sweep {name}=off,on")
        sweep[name] = parsed
    return sweep


def _field_value(name: str, value: Any) -> Any:
    """A sweep value as the TrainConfig field wants it (on/off → bool, numbers → numbers)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    default = TrainConfig().__getattribute__(name)
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise StudyError(f"--sweep {name}={text}: use on/off")
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return None if text.lower() == "none" else text


@dataclass
class StudySpec:
    """Everything a study compares; resolved values only (see :func:`from_options`)."""

    model: str
    data: str
    schemes: list[SchemeSpec]
    k: list[int] = field(default_factory=lambda: [3])
    unit: str = "block"
    rank: list[int] = field(default_factory=lambda: [8])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    task: str = "causal"
    methods: list[MethodSpec] = field(default_factory=lambda: [MethodSpec(DEFAULT_METHOD)])
    estimator: str = "ks"
    train: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.unit not in UNITS:
            problems.append(f"--unit {self.unit} must be one of {', '.join(UNITS)}")
        for name, values in (("--k", self.k), ("--rank", self.rank)):
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                 for v in values):
                problems.append(f"{name} {values} must be whole numbers ≥ 1")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            problems.append(f"--seeds {self.seeds} must be a count ≥ 1 or seeds ≥ 0")
        owned = sorted(set(self.train) & STUDY_OWNED)
        if owned:
            problems.append(f"[train] {', '.join(owned)}: the study decides these per run")
        if self.train.get("also") and not any(m.method == UNFREEZE for m in self.methods):
            problems.append("[train] also: --also trains parts beside unfrozen matrices; add "
                            f"{UNFREEZE} to --methods")
        if problems:
            raise StudyError("; ".join(problems))
        try:  # every training option problem now, not after an hour
            for method in self.methods:
                self.config(seed=0, method=method)
        except (TrainConfigError, TypeError) as err:
            raise StudyError(f"training options: {err}") from None

    def unit_of(self, method: MethodSpec) -> str:
        """What ``method``'s k counts: its own unit, else the study's."""
        return method.unit or self.unit

    def ks_of(self, method: MethodSpec) -> list[int]:
        """The ks ``method`` is matched at: its own, else the study's."""
        return [method.k] if method.k is not None else self.k

    def config(self, seed: int, sweep: dict[str, Any] | None = None, scheme: SchemeSpec | None
               = None, method: MethodSpec | None = None) -> TrainConfig:
        """The TrainConfig of one run, trained with ``method`` (``full`` for scheme full);
        ``also`` applies to the unfreeze runs only, a method's own ``lr`` over the study's."""
        method = method or MethodSpec(DEFAULT_METHOD)
        name = "full" if scheme is not None and scheme.scheme == "full" else method.method
        # Generations cost seconds per run and compare nothing: on only when [train] asks.
        values = {"generate": False, **self.train, **(sweep or {}), "seed": seed,
                  "task": self.task, "method": name}
        if name != UNFREEZE:
            values.pop("also", None)
        if method.lr is not None and name != "full":
            values["lr"] = method.lr
        if scheme is not None and scheme.option("reselect"):
            values["reselect"] = True
        if values["method"] == "full":
            # An adapter's learning rate would wreck full fine-tuning: it keeps its own default.
            values.pop("lr", None)
        return TrainConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schemes"] = [spec.label for spec in self.schemes]
        data["methods"] = [method.label for method in self.methods]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> StudySpec:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known - {"method"})  # method: the older single method
        if unknown:
            raise StudyError(f"{source}: unknown field(s) {', '.join(unknown)}; a study spec "
                             f"has {', '.join(sorted(known))}")
        for required in ("model", "data", "schemes"):
            if required not in data:
                raise StudyError(f"{source}: '{required}' is required")
        values = dict(data)
        if "method" in values:  # a spec written before studies took several methods
            if "methods" in values:
                raise StudyError(f"{source}: give methods (a list), not method as well")
            values["methods"] = [values.pop("method")]
        values["methods"] = parse_methods(values.get("methods", [DEFAULT_METHOD]))
        values["schemes"] = parse_schemes(values["schemes"])
        values["k"] = _int_list(values.get("k", [3]), "k")
        values["rank"] = _int_list(values.get("rank", [8]), "rank")
        values["seeds"] = parse_seeds(values.get("seeds", 3))
        values["sweep"] = parse_sweep(values.get("sweep") or {})
        values["train"] = dict(values.get("train") or {})
        return cls(**values)


def parse_seeds(value: int | str | list) -> list[int]:
    """Seeds from a count (``5``, ``"5"``: seeds 0-4) or a list (``"0,3,7"``, ``[0, 3, 7]``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return list(range(value))
    if isinstance(value, str) and value.strip().isdigit():
        return list(range(int(value)))
    return _int_list(value, "seeds")


def _int_list(value: Any, name: str) -> list[int]:
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        return [int(item) for item in items]
    except (TypeError, ValueError):
        raise StudyError(f"--{name} {value}: give whole numbers, e.g. --{name} 1,2,4") from None


def load_spec(path: str | Path) -> StudySpec:
    """A study spec from a TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"study spec '{path}' does not exist: give a .toml file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise StudyError(f"study spec '{path}' is not valid TOML: {err}") from None
    return StudySpec.from_dict(data, source=f"study spec '{path}'")
