"""The result cache: each matrix's fit is stored as it finishes, so an interrupted analysis
resumes where it stopped and a repeated one reads its results back instead of computing them.

One small JSON file per matrix result, ``<cache>/<2 hex digits>/<sha256 of the key>.json``,
holding the key itself and the result. The key, built by the analyzer, is everything a result
depends on: the source's identity of the tensor (file path, size, mtime, offset, dtype,
shape), the matrix name, the estimator, the resolved downsampling, min_evals, the device, the
versions of the code that computes it and the table's columns. A changed file or option gives
another key: a miss. So does a new metric column (``snr`` was one): entries stored before it
lack its value and are never served as complete rows. A metric whose definition changes while
alphasel's version stays needs :data:`SCHEMA` bumped.

Entries are written whole (``alphasel.atomic``: a temporary file per writer, then a rename),
so two analyses of one model at once at worst fit a matrix twice, and a reader never sees a
torn entry. An entry that cannot be read, does not parse or holds another key is a miss: the
matrix is fitted again and the entry overwritten. Nothing here ever fails an analysis.

Location: ``$ALPHASEL_CACHE``, else ``$XDG_CACHE_HOME/alphasel/alpha`` (``~/.cache/...``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from alphasel.atomic import write_text

#: Version of the entry layout and of what its results mean; entries of another version are
#: misses.
SCHEMA = 1
_NON_FINITE = {"nan", "inf", "-inf"}


def user_cache_dir(name: str) -> Path:
    """alphasel's folder ``name`` in the user's cache directory (``$XDG_CACHE_HOME``, else
    ``~/.cache``)."""
    user_cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(user_cache).expanduser() / "alphasel" / name


def cache_dir() -> Path:
    """Where results are cached: ``$ALPHASEL_CACHE``, else the user's cache directory."""
    if os.environ.get("ALPHASEL_CACHE"):
        return Path(os.environ["ALPHASEL_CACHE"]).expanduser()
    return user_cache_dir("alpha")


def _canonical(key: dict) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _encode(result: dict) -> tuple[dict, dict]:
    """(values, non-finite floats by name as 'nan'/'inf'/'-inf'): JSON has no NaN, and a
    float's repr, which json writes, reads back as the same float bit for bit."""
    values, non_finite = {}, {}
    for name, value in result.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            non_finite[name], value = repr(value), None
        values[name] = value
    return values, non_finite


def _decode(values: object, non_finite: object) -> dict | None:
    """The stored result, or None when the entry is not one this module wrote."""
    if not isinstance(values, dict) or not isinstance(values.get("status"), str):
        return None
    if not isinstance(non_finite, dict) or not set(non_finite.values()) <= _NON_FINITE:
        return None
    if not all(isinstance(value, str | int | float | None) for value in values.values()):
        return None
    return {**values, **{name: float(text) for name, text in non_finite.items()}}


class ResultCache:
    """Per-matrix results on disk, looked up and stored by key (a JSON-ready dict)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = cache_dir() if folder is None else Path(folder)
        self._writable = True
        self._lock = threading.Lock()

    def path(self, key: dict) -> Path:
        """The entry file of ``key``."""
        digest = hashlib.sha256(_canonical(key).encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.json"

    def get(self, key: dict) -> dict | None:
        """The result stored under ``key``, or None (absent, unreadable, corrupt, another key)."""
        try:
            entry = json.loads(self.path(key).read_text())
            if entry.get("schema") != SCHEMA or _canonical(entry.get("key")) != _canonical(key):
                return None
            return _decode(entry.get("result"), entry.get("non_finite", {}))
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def put(self, key: dict, result: dict) -> None:
        """Store ``result`` under ``key``, whole. A cache that cannot be written warns once and
        is left alone for the rest of the analysis: the results are still returned."""
        if not self._writable:
            return
        values, non_finite = _encode(result)
        text = json.dumps({"schema": SCHEMA, "key": key, "result": values,
                           "non_finite": non_finite}, allow_nan=False)
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
        except OSError as err:
            with self._lock:
                if self._writable:
                    self._writable = False
                    warnings.warn(f"alpha cache '{self.folder}' cannot be written ({err}): "
                                  "results are not cached; set ALPHASEL_CACHE to a writable "
                                  "directory or pass --no-cache", stacklevel=2)
