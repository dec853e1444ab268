"""JSON and JSON-lines files of records: whole files written through :mod:`alphasel.atomic`,
lines appended and synced one at a time, and both read back. JSON has no NaN or infinity, so
such floats (a diverged loss) are written as null."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from alphasel.atomic import write_text
from alphasel.errors import RunError


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN/inf float in it (in dicts, lists, tuples) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON, whole (a temporary file renamed into place, synced first)."""
    return write_text(path, json.dumps(finite_or_none(data), indent=1, allow_nan=False,
                                       default=str) + "\n", sync=True)


def append_jsonl(path: Path, row: dict) -> None:
    """Append one JSON line, flushed and synced, so a killed writer keeps every line written."""
    line = json.dumps(finite_or_none(row), allow_nan=False, default=str)
    with open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file (none when it is absent); a torn last line (a killed
    writer) is skipped, a bad line before it raises :class:`RunError`."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise RunError(f"'{path}' line {number} is not JSON ({err}): the run record is "
                           "corrupt; start the run again with --overwrite") from err
    return rows
