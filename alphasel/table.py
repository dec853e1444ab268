"""The alpha table on disk: written, read back, checked, saved under runs/ and combined.

One row per weight matrix (the columns are in :mod:`alphasel.columns`). Metadata (model id,
revision, estimator, options, versions, time) travels in ``DataFrame.attrs["alphasel"]`` in
memory, and in a ``meta.json`` beside the table (or inside a parquet file) on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from alphasel.atomic import replacing, write_text
from alphasel.columns import META_KEY, REQUIRED_COLUMNS, metadata
from alphasel.errors import TableError
from alphasel.paths import analyses_dir, latest_analysis_pointer, model_slug, utc_stamp

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".json")


def table_format(path: Path) -> str:
    """The table format of ``path`` by its extension; raises TableError if unsupported."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise TableError(
            f"cannot tell the table format of '{path}' from its extension: use a file ending in "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    return suffix


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write exactly the table to ``path``, format by extension (.csv, .parquet, .json).

    The file is written to a temporary name and renamed, so a failure leaves no partial file.
    """
    path = Path(path)
    suffix = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(table)  # drops nothing; attrs are handled per format below
    with replacing(path) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        elif suffix == ".json":
            frame.to_json(tmp, orient="records", indent=1)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            arrow = pa.Table.from_pandas(frame, preserve_index=False)
            meta = dict(arrow.schema.metadata or {})
            meta[META_KEY.encode()] = json.dumps(metadata(table), default=str).encode()
            pq.write_table(arrow.replace_schema_metadata(meta), tmp)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    """Read an alpha table written by :func:`write_table` or :func:`save_analysis`.

    Metadata comes from a parquet file's schema or from a ``meta.json`` beside the table.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"alpha table '{path}' does not exist: run `alphasel analyze MODEL` "
                         "or pass the path of an existing table")
    suffix = table_format(path)
    meta: dict = {}
    try:
        if suffix == ".csv":
            table = pd.read_csv(path)
        elif suffix == ".json":
            table = pd.read_json(path, orient="records")
        else:
            import pyarrow.parquet as pq

            arrow = pq.read_table(path)
            raw = (arrow.schema.metadata or {}).get(META_KEY.encode())
            meta = json.loads(raw) if raw else {}
            table = arrow.to_pandas()
    except (ValueError, OSError) as err:
        raise TableError(f"cannot read alpha table '{path}' ({err}): "
                         "re-create it with `alphasel analyze`") from err
    sidecar = path.with_name("meta.json")
    if not meta and sidecar.is_file():
        stored = json.loads(sidecar.read_text())
        if stored.get("table") == path.name:
            meta = stored
    if "block" in table.columns:
        table["block"] = table["block"].astype("Int64")
    table.attrs[META_KEY] = meta
    table.attrs[META_KEY].setdefault("path", str(path))
    return table


def check_table(table: pd.DataFrame, required: list[str] | None = None,
                source: str = "alpha table") -> None:
    """Raise :class:`TableError` if ``table`` is empty or lacks required columns."""
    required = REQUIRED_COLUMNS if required is None else required
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise TableError(f"{source} lacks column(s) {', '.join(missing)}: "
                         "use a table written by `alphasel analyze`")
    if len(table) == 0:
        raise TableError(f"{source} is empty: analyze a model with at least one weight matrix")


def save_analysis(table: pd.DataFrame, model_id: str) -> Path:
    """Save under ``runs/analyses/<model-slug>/<time>-<estimator>/alpha.csv`` with ``meta.json``
    beside it, and remember it as the latest analysis. Returns the table's path."""
    meta = metadata(table)
    estimator = meta.get("estimator", "ks")
    folder = analyses_dir() / model_slug(model_id) / f"{utc_stamp()}-{estimator}"
    folder.mkdir(parents=True, exist_ok=False)
    path = write_table(table, folder / "alpha.csv")
    (folder / "meta.json").write_text(json.dumps({"table": path.name, **meta}, indent=1,
                                                 default=str))
    pointer = latest_analysis_pointer()
    pointer.write_text(str(path.resolve()) + "\n")
    return path


def combine_tables(tables: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """Several models' alpha tables as one, with a leading ``model`` column holding each row's
    label (the model as the user named it); the metadata lists each table's under "models"."""
    if not tables:
        raise TableError("no alpha tables to combine: analyze at least one model")
    combined = pd.concat([table.assign(model=label) for label, table in tables],
                         ignore_index=True)
    combined = combined[["model"] + [c for c in combined.columns if c != "model"]]
    combined.attrs = {META_KEY: {"models": [{"model": label, **metadata(table)}
                                            for label, table in tables]}}
    return combined


def check_tables_directory(out: Path) -> None:
    """Raise :class:`TableError` unless ``out`` can be the directory of several tables."""
    if out.suffix.lower() in SUPPORTED_SUFFIXES or out.is_file():
        raise TableError(f"with several models --out is the directory for their tables, got the "
                         f"file '{out}': pass a directory (e.g. --out {out.with_suffix('')}/), "
                         "or analyze one model to write one file")


def _unique_names(slugs: list[str]) -> list[str]:
    """``slug``, then ``slug-2``, ``slug-3`` … for slugs that repeat (two ``…/final`` dirs)."""
    seen: dict[str, int] = {}
    names = []
    for slug in slugs:
        seen[slug] = seen.get(slug, 0) + 1
        names.append(slug if seen[slug] == 1 else f"{slug}-{seen[slug]}")
    return names


def save_analyses(tables: list[tuple[str, pd.DataFrame]],
                  out: Path | None = None) -> tuple[list[Path], Path]:
    """Write several models' tables and their combination (:func:`combine_tables`); return
    (each table's path, the combined table's path).

    Without ``out``, each table is saved as :func:`save_analysis` does (the last one becomes the
    latest analysis) and the combination as ``runs/analyses/combined/<time>-<estimator>/
    combined.csv`` with ``meta.json``. With ``out``, a directory: ``<out>/<model-slug>.csv``
    each (``-2``, ``-3`` … where slugs repeat) and ``<out>/combined.csv``.
    """
    if out is not None:
        check_tables_directory(out)
        names = _unique_names([model_slug(metadata(table).get("model_id", label))
                               for label, table in tables])
        paths = [write_table(table, out / f"{name}.csv")
                 for name, (_, table) in zip(names, tables, strict=True)]
    else:
        paths = [save_analysis(table, metadata(table).get("model_id", label))
                 for label, table in tables]
    for path, (_, table) in zip(paths, tables, strict=True):
        table.attrs.setdefault(META_KEY, {})["path"] = str(path)
    combined = combine_tables(tables)
    if out is not None:
        return paths, write_table(combined, out / "combined.csv")
    estimator = metadata(tables[0][1]).get("estimator", "ks")
    folder = analyses_dir() / "combined" / f"{utc_stamp()}-{estimator}"
    folder.mkdir(parents=True, exist_ok=False)
    path = write_table(combined, folder / "combined.csv")
    write_text(folder / "meta.json", json.dumps({"table": path.name, **metadata(combined)},
                                                indent=1, default=str))
    return paths, path


def latest_analysis() -> Path:
    """The path of the latest analysis saved under ``runs/`` (raises if there is none)."""
    pointer = latest_analysis_pointer()
    if pointer.is_file():
        path = Path(pointer.read_text().strip())
        if path.is_file():
            return path
    raise TableError(f"no analysis found under '{analyses_dir()}': run "
                     "`alphasel analyze MODEL` first or pass a table with --analysis")
