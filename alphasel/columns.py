"""What an alpha table holds: its columns, the status of a fitted row, and where its metadata
travels. The analyzer writes to this contract; :mod:`alphasel.table` reads, writes and checks
tables by it, and the planner and the figures read them (DESIGN.md, "The alpha table")."""

from __future__ import annotations

import pandas as pd

#: Columns every alpha table has, in this order. ``alpha`` … ``alpha_weighted`` are
#: WeightWatcher's (``sigma`` is the standard error of alpha); ``snr`` is Spectrum's
#: signal-to-noise ratio of the singular values (``snr.marchenko_pastur_snr``; ``inf`` for
#: a matrix without noise), also on rows whose power-law fit failed, as the norms are. Tables
#: written before ``snr`` existed read without it.
COLUMNS = [
    "name", "block", "kind", "rows", "cols",
    "alpha", "xmin", "D", "sigma", "num_evals", "num_pl_spikes",
    "log_norm", "log_spectral_norm", "stable_rank", "alpha_weighted", "snr",
    "status",
]
#: The columns that can rank matrices (``--metric``): every per-matrix measurement.
METRICS = ["alpha", "xmin", "D", "sigma", "num_pl_spikes", "log_norm", "log_spectral_norm",
           "stable_rank", "alpha_weighted", "snr"]
#: Columns added by downsampled analyses (the metrics above are then means over the samples,
#: each sample's ``snr`` with the sampled shape's aspect ratio).
DOWNSAMPLE_COLUMNS = ["alpha_std", "samples"]
#: What a table must hold for the planner and the plots to use it.
REQUIRED_COLUMNS = ["name", "block", "kind", "alpha"]
#: status of a row whose fit succeeded.
STATUS_OK = "ok"

#: Where a table's metadata lives: ``DataFrame.attrs[META_KEY]`` in memory, the parquet
#: schema's metadata under this key on disk (or a meta.json beside a CSV/JSON table).
META_KEY = "alphasel"
#: The metadata key holding the parameters of every weight matrix of the analysed model.
TOTAL_MATRIX_PARAMS = "total_matrix_params"


def metadata(table: pd.DataFrame) -> dict:
    """The metadata that travels with a table (empty dict when none)."""
    return dict(table.attrs.get(META_KEY, {}))
