"""Spectrum's signal-to-noise ratio in the alpha table: equal to what Spectrum computes on the
same weights, on every row with eigenvalues, per sample when downsampling, cached with the rest.

The reference below redoes Spectrum's computation the way its spectrum.py does it
(``ModelModifier.calculate_snr_for_layer`` with ``estimate_sigma_with_full_iqr`` and
``marchenko_pastur_threshold``, cognitivecomputations/spectrum): a float32 SVD of the weight
as the module holds it, torch's quantiles, float32 sums.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ANALYSIS_LLAMA, tiny_llama
from safetensors.torch import save_file

from alphasel import analyze
from alphasel.analyzer import analyze_matrix
from alphasel.cache import ResultCache
from alphasel.columns import COLUMNS, STATUS_OK
from alphasel.downsample import sample_shape_for
from alphasel.snr import marchenko_pastur_snr
from alphasel.spectra import sample_generator, sample_submatrix
from alphasel.table import read_table, write_table

RELATIVE = 1e-5  # float32 SVD against float64 eigenvalues


def spectrum_snr(weight: torch.Tensor, empty_noise: float = 1.0) -> float:
    """Spectrum's SNR of ``weight``. ``empty_noise`` is the noise its current code divides by
    when no singular value is at or below the threshold (1.0 since April 2025)."""
    values = torch.linalg.svdvals(weight.detach().to(torch.float32))  # descending
    spread = torch.quantile(values, 0.75) - torch.quantile(values, 0.25)
    rows, cols = weight.shape[-2:]
    ratio = min(rows, cols) / max(rows, cols)
    threshold = spread / 1.349 * np.sqrt((1 + np.sqrt(ratio)) ** 2)
    above = values > threshold
    signal = values[above].sum() if above.any() else torch.tensor(0.0)
    noise = values[~above].sum() if (~above).any() else torch.tensor(empty_noise)
    snr = signal / noise if noise != 0 else float("inf")
    return float(snr / values[0])


def _layers(matrices: dict[str, np.ndarray]) -> torch.nn.ModuleDict:
    """A module holding each matrix as a bias-free Linear's weight (rows × cols as given)."""
    model = torch.nn.ModuleDict()
    for name, matrix in matrices.items():
        layer = torch.nn.Linear(matrix.shape[1], matrix.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(matrix))
        model[name] = layer
    return model


def _spiked(rng: np.random.Generator, rows: int, cols: int, spikes: int) -> np.ndarray:
    """Gaussian noise plus a few strong rank-one directions: signal above the edge, noise below."""
    noise = rng.standard_normal((rows, cols))
    for strength in np.linspace(3.0, 6.0, spikes):
        noise += strength * np.sqrt(cols) * np.outer(rng.standard_normal(rows) / np.sqrt(rows),
                                                     rng.standard_normal(cols) / np.sqrt(cols))
    return (0.02 * noise).astype(np.float32)


RANDOM = {
    "tall": lambda rng: _spiked(rng, 120, 60, 3),
    "wide": lambda rng: _spiked(rng, 48, 112, 2),
    "square": lambda rng: (0.02 * rng.standard_normal((80, 80))).astype(np.float32),
    "student_t": lambda rng: (0.02 * rng.standard_t(3.0, (96, 64))).astype(np.float32),
}


def test_snr_equals_spectrum_on_a_tiny_llama():
    model = tiny_llama(layers=2, **ANALYSIS_LLAMA)
    table = analyze(model, progress=False).set_index("name")
    modules = dict(model.named_modules())
    assert list(table.reset_index().columns) == COLUMNS and "snr" in COLUMNS
    for name in ["model.embed_tokens", "model.layers.0.self_attn.q_proj",
                 "model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj",
                 "model.layers.1.mlp.gate_proj", "lm_head"]:
        expected = spectrum_snr(modules[name].weight)
        assert math.isfinite(expected)
        assert table.loc[name, "snr"] == pytest.approx(expected, rel=RELATIVE), name
    assert table["snr"].notna().all() and (table["snr"] > 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_snr_equals_spectrum_on_random_tall_and_wide_matrices(seed):
    rng = np.random.default_rng(seed)
    matrices = {name: make(rng) for name, make in RANDOM.items()}
    table = analyze(_layers(matrices), progress=False).set_index("name")
    for name, matrix in matrices.items():
        expected = spectrum_snr(torch.from_numpy(matrix))
        assert math.isfinite(expected)
        assert table.loc[name, "snr"] == pytest.approx(expected, rel=RELATIVE), name
        # The same through the per-matrix function training uses, transposed (Conv1D's layout).
        assert analyze_matrix(matrix.T, name)["snr"] == pytest.approx(expected, rel=RELATIVE)


def test_snr_is_the_spectrum_definition_on_known_singular_values():
    # 8 singular values 1..8 of an 8×32 matrix: quartiles 2.75 and 6.25, β = 1/4, so the edge
    # is 3.5 / 1.349 × 1.5 ≈ 3.89; signal 4+…+8 = 30, noise 1+2+3 = 6, divided by 8.
    evals = np.arange(1.0, 9.0) ** 2
    assert marchenko_pastur_snr(evals, (8, 32)) == pytest.approx(30 / 6 / 8, rel=1e-12)
    # Square: β = 1, the edge ≈ 5.19 moves 4 and 5 to the noise.
    assert marchenko_pastur_snr(evals, (8, 8)) == pytest.approx(21 / 15 / 8, rel=1e-12)
    # The value is in units of 1/s: scaling the weights by c divides it by c.
    assert marchenko_pastur_snr(9 * evals, (8, 32)) == pytest.approx(30 / 6 / 8 / 3, rel=1e-12)


def test_snr_needs_no_second_decomposition(monkeypatch):
    model = tiny_llama(layers=1, **ANALYSIS_LLAMA)

    def refuse(*args, **kwargs):
        raise AssertionError("the SNR must come from the eigenvalues already computed")

    for module, function in [(np.linalg, "svd"), (torch.linalg, "svdvals"),
                             (torch.linalg, "svd")]:
        monkeypatch.setattr(module, function, refuse)
    table = analyze(model, progress=False)
    assert table["snr"].notna().all()


def test_a_matrix_without_noise_has_infinite_snr_even_without_a_tail():
    rng = np.random.default_rng(0)
    orthogonal, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    matrices = {"identity": (2.0 * np.eye(64)).astype(np.float32),
                "orthogonal": orthogonal.astype(np.float32),
                # β = 0.2: the smallest singular value of a Gaussian matrix is above the edge.
                "gaussian": rng.standard_normal((300, 60)).astype(np.float32)}
    table = analyze(_layers(matrices), progress=False).set_index("name")
    assert table.loc["identity", "status"].startswith("no power-law tail")
    assert table.loc["gaussian", "status"] == STATUS_OK
    assert (table["snr"] == math.inf).all()
    # Spectrum's published tables say inf too; its current code divides by a noise of 1.
    values = torch.linalg.svdvals(torch.from_numpy(matrices["gaussian"]))
    assert spectrum_snr(torch.from_numpy(matrices["gaussian"]), empty_noise=0.0) == math.inf
    assert spectrum_snr(torch.from_numpy(matrices["gaussian"])) == pytest.approx(
        float(values.sum() / values[0]), rel=RELATIVE)


def test_rows_without_eigenvalues_have_no_snr():
    model = torch.nn.ModuleDict({"good": torch.nn.Linear(64, 64, bias=False),
                                 "nan": torch.nn.Linear(64, 64, bias=False),
                                 "zero": torch.nn.Linear(64, 64, bias=False),
                                 "tiny": torch.nn.Linear(5, 64, bias=False)})
    with torch.no_grad():
        model["nan"].weight[3, 3] = float("nan")
        model["zero"].weight.zero_()
    table = analyze(model, progress=False).set_index("name")
    assert math.isfinite(table.loc["good", "snr"])
    assert table.loc[["nan", "zero", "tiny"], "snr"].isna().all()
    sampled = analyze(model, downsample="fixed:32x32", samples=2, progress=False)
    assert sampled.set_index("name").loc[["nan", "zero"], "snr"].isna().all()


def test_downsampled_snr_is_the_mean_over_samples_of_their_own_shape():
    rng = np.random.default_rng(3)
    matrix = _spiked(rng, 120, 120, 3)
    table = analyze(_layers({"square": matrix}), downsample="fixed:96x40", samples=3, seed=5,
                    progress=False)
    row = table.iloc[0]
    assert row["samples"] == 3
    rows, cols = sample_shape_for(matrix.shape, tuple(table.attrs["alphasel"]["downsample"]
                                                      ["shape"]))
    assert sorted((rows, cols)) == [40, 96]
    samples = [sample_submatrix(matrix, rows, cols, sample_generator(5, "square", draw))
               for draw in range(3)]
    expected = np.mean([spectrum_snr(torch.from_numpy(sample)) for sample in samples])
    assert row["snr"] == pytest.approx(expected, rel=RELATIVE)
    # β of the 96×40 sample (5/12), not of the square matrix (1): those give another mean.
    evals = [np.linalg.eigvalsh(sample.astype(np.float64).T @ sample) for sample in samples]
    square_beta = np.mean([marchenko_pastur_snr(values, (96, 96)) for values in evals])
    assert square_beta != pytest.approx(expected, rel=1e-3)


def _checkpoint(tmp_path: Path) -> Path:
    model = tiny_llama(layers=2, **ANALYSIS_LLAMA)
    path = tmp_path / "model.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()
               if name != "lm_head.weight"}, path)  # tied to the embedding
    return path


def test_snr_is_cached_and_read_back(tmp_path, alpha_cache):
    path = _checkpoint(tmp_path)
    first = analyze(path, progress=False)
    entries = sorted(alpha_cache.glob("*/*.json"))
    assert entries and all("snr" in json.loads(entry.read_text())["result"]
                           for entry in entries)
    second = analyze(path, progress=False)
    assert second.attrs["alphasel"]["cached"] == len(first)
    assert second["snr"].notna().all()
    pd.testing.assert_frame_equal(first, second)


def test_entries_stored_before_snr_are_not_served(tmp_path, alpha_cache):
    path = _checkpoint(tmp_path)
    reference = analyze(path, progress=False, cache=False)
    analyze(path, progress=False)
    # Rewrite the cache as alphasel wrote it before snr: no snr in the results, and a key
    # without the table's columns.
    cache = ResultCache(alpha_cache)
    for entry_path in sorted(alpha_cache.glob("*/*.json")):
        entry = json.loads(entry_path.read_text())
        key, result = entry["key"], entry["result"]
        key.pop("columns", None)
        del result["snr"]
        entry_path.unlink()
        cache.put(key, result)
        assert cache.get(key) == result  # a valid old entry, readable under its own key
    table = analyze(path, progress=False)
    assert table.attrs["alphasel"]["cached"] == 0
    pd.testing.assert_frame_equal(table, reference)


def test_a_table_from_before_snr_still_reads(tmp_path):
    table = analyze(tiny_llama(layers=1, **ANALYSIS_LLAMA), progress=False)
    for suffix in (".csv", ".parquet"):
        old = write_table(table.drop(columns="snr"), tmp_path / f"old{suffix}")
        read = read_table(old)
        assert "snr" not in read.columns and len(read) == len(table)
        pd.testing.assert_series_equal(read["alpha"], table["alpha"])


def test_infinite_snr_survives_csv_and_parquet(tmp_path):
    table = analyze(_layers({"identity": np.eye(32, dtype=np.float32)}), progress=False)
    for suffix in (".csv", ".parquet"):
        assert read_table(write_table(table, tmp_path / f"t{suffix}"))["snr"].iloc[0] == math.inf
