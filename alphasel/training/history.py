"""A run's alpha history (``alpha_history.csv``): its columns, its one reader, and the alpha
change read from it.

One row per measured module per measurement: epoch 0 is before training, a row of epoch e > 0
is measured after epoch e (or at a step, with ``--alpha-every``), and ``adapted`` says the
module had an adapter (or trained) during that epoch. :class:`alphasel.training.record.RunWriter`
writes the file and :meth:`alphasel.training.record.RunRecord.alpha_history` reads it through
:func:`read_alpha_history`; the figures, re-selection and the study read it the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from alphasel.errors import RunError
from alphasel.layout import model_order

#: alpha_history.csv's columns, as DESIGN.md lays them out.
ALPHA_COLUMNS = ["epoch", "step", "name", "block", "kind", "alpha", "xmin", "D",
                 "num_pl_spikes", "adapted"]
#: The columns a history must have to be read.
REQUIRED_COLUMNS = ["epoch", "step", "name", "block", "kind", "alpha", "adapted"]


def _as_bool(column: pd.Series) -> pd.Series:
    # CSV round trips give "True"/"False" strings; hand-made frames give bools or 0/1.
    if column.dtype == bool:
        return column
    text = column.astype(str).str.strip().str.lower()
    return text.isin(("true", "1", "1.0", "yes"))


def alpha_history_table(history: pd.DataFrame, source: str = "the alpha history"
                        ) -> pd.DataFrame:
    """``history`` with its types fixed (name, kind text; block a nullable integer; epoch,
    alpha float; step integer; adapted boolean) and its rows in measurement order (step,
    epoch, then model order). Raises :class:`RunError` naming ``source`` when a column the
    readers need is missing."""
    missing = [column for column in REQUIRED_COLUMNS if column not in history.columns]
    if missing:
        raise RunError(f"{source} lacks column(s) {', '.join(missing)}: use a history written "
                       "by `alphasel train`")
    frame = history.copy()
    frame["name"] = frame["name"].astype(str)
    frame["kind"] = frame["kind"].astype(str)
    frame["block"] = pd.to_numeric(frame["block"], errors="coerce").astype("Int64")
    for column in ("epoch", "alpha"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("int64")
    frame["adapted"] = _as_bool(frame["adapted"])
    rank = {name: index for index, name in enumerate(module_names(frame))}
    frame["_module"] = frame["name"].map(rank)
    frame = frame.sort_values(["step", "epoch", "_module"], kind="stable")
    return frame.drop(columns="_module").reset_index(drop=True)


def read_alpha_history(path: str | Path) -> pd.DataFrame | None:
    """The alpha history in ``path`` (see :func:`alpha_history_table`); None when the file
    does not exist, an empty table when it holds no row (nothing was measured)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        history = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=ALPHA_COLUMNS)
    except (OSError, ValueError) as err:
        raise RunError(f"cannot read '{path}' ({err}): the run's alpha history is corrupt; "
                       "run it again") from None
    if history.empty:
        return history
    return alpha_history_table(history, f"'{path}'")


def module_names(history: pd.DataFrame) -> list[str]:
    """The history's modules in model order (:func:`alphasel.layout.model_order`)."""
    modules = history.drop_duplicates("name")
    keys = {str(row.name): model_order(str(row.name),
                                       None if pd.isna(row.block) else int(row.block),
                                       str(row.kind))
            for row in modules[["name", "block", "kind"]].itertuples(index=False)}
    return sorted(keys, key=keys.get)


def alpha_changes(history: pd.DataFrame) -> pd.DataFrame:
    """One row per module of a history read by :func:`alpha_history_table`, in model order:
    name, kind, adapted (in any epoch), first and last alpha, first_epoch, last_epoch and
    ``change``, the alpha change of a module: alpha at its last measurement − alpha at its
    first (before training)."""
    rows = []
    for name in module_names(history):
        module = history[history["name"] == name]
        rows.append(dict(name=name, kind=module["kind"].iloc[0],
                         adapted=bool(module["adapted"].any()),
                         first=float(module["alpha"].iloc[0]),
                         last=float(module["alpha"].iloc[-1]),
                         first_epoch=float(module["epoch"].iloc[0]),
                         last_epoch=float(module["epoch"].iloc[-1])))
    changes = pd.DataFrame(rows, columns=["name", "kind", "adapted", "first", "last",
                                          "first_epoch", "last_epoch"])
    changes["change"] = changes["last"] - changes["first"]
    return changes


def alpha_shift(history: pd.DataFrame | None) -> float:
    """The mean alpha change (:func:`alpha_changes`) of the modules that had an adapter in
    some epoch (with re-selection the rounds adapt different modules) and were measured again
    after their first measurement, with a fit at both ends. NaN when the run kept no history
    or measured nothing after training began."""
    if history is None or history.empty:
        return math.nan
    changes = alpha_changes(history)
    changes = changes[changes["adapted"] & (changes["last_epoch"] > changes["first_epoch"])]
    shift = changes["change"].dropna()
    return float(shift.mean()) if len(shift) else math.nan
