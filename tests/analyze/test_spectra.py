import numpy as np
import pytest
import torch

from alphasel import lapack, spectra
from alphasel.spectra import (
    NonFiniteError,
    eigenvalues,
    gram_matrix,
    sample_generator,
    sample_submatrix,
)


@pytest.fixture(params=["openblas", "numpy"])
def solver(request, monkeypatch):
    """Each test once with the OpenBLAS routines (dsyrk, dsyevd_2stage from size 2 on) and once
    with numpy's matmul + eigvalsh, the fallback where they are missing."""
    if request.param == "numpy":
        monkeypatch.setenv("ALPHASEL_LAPACK", "numpy")
    else:
        monkeypatch.delenv("ALPHASEL_LAPACK", raising=False)
        monkeypatch.setattr(spectra, "_LAPACK_MIN_SIZE", 2)
    lapack.routines.cache_clear()
    if request.param == "openblas" and lapack.routines() is None:
        pytest.skip("numpy here does not use OpenBLAS")
    yield request.param
    lapack.routines.cache_clear()


@pytest.mark.parametrize("shape", [(120, 40), (40, 120), (64, 64)])
def test_eigenvalues_are_squared_singular_values(shape, solver):
    matrix = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = np.sort(np.linalg.svd(matrix.astype(np.float64), compute_uv=False) ** 2)
    ours = eigenvalues(matrix)
    assert ours.shape == (min(shape),)
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-10 * expected.max())


def test_torch_input_and_chunked_gram_agree(monkeypatch, solver):
    matrix = np.random.default_rng(1).standard_normal((300, 50))
    direct = np.tril(matrix.T @ matrix)  # the lower triangle is the one guaranteed
    with monkeypatch.context() as patch:
        patch.setattr(spectra, "_GRAM_CHUNK_ELEMENTS", 7 * 50)  # several slices of 7
        for layout in (matrix, matrix.T, np.asfortranarray(matrix.T)):
            np.testing.assert_allclose(np.tril(gram_matrix(layout)), direct, rtol=1e-12)
    np.testing.assert_allclose(np.tril(gram_matrix(matrix)), direct, rtol=1e-12)  # one slice
    np.testing.assert_allclose(eigenvalues(torch.from_numpy(matrix)), eigenvalues(matrix))


def test_openblas_routines_equal_numpy(monkeypatch):
    """The two-stage solver on dsyrk's Gram matrix gives numpy's syevd eigenvalues (the
    WeightWatcher parity tests run on whichever is found)."""
    if lapack.routines() is None:
        pytest.skip("numpy here does not use OpenBLAS")
    monkeypatch.setattr(spectra, "_LAPACK_MIN_SIZE", 2)
    matrix = np.random.default_rng(2).standard_t(3, size=(700, 260)).astype(np.float32)
    ours = eigenvalues(matrix)
    reference = np.linalg.eigvalsh(matrix.astype(np.float64).T @ matrix.astype(np.float64))
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-13 * reference.max())
    assert spectra.eigensolver().startswith("openblas")


def test_missing_routines_fall_back_to_numpy(monkeypatch):
    class NoSymbols:  # a BLAS without dsyrk/dsyevd_2stage (getattr raises AttributeError)
        pass

    assert lapack._bind(NoSymbols()) is None
    monkeypatch.setenv("ALPHASEL_LAPACK", "numpy")
    lapack.routines.cache_clear()
    try:
        assert lapack.routines() is None
        assert spectra.eigensolver().startswith("numpy")
        matrix = np.random.default_rng(3).standard_normal((50, 30))
        np.testing.assert_allclose(eigenvalues(matrix),
                                   np.linalg.eigvalsh(matrix.T @ matrix), rtol=1e-10)
    finally:
        lapack.routines.cache_clear()


def test_torch_device_path_upcasts_half_precision():
    """The GPU path's code (stored precision moved, upcast to float64 on the device), run on
    torch's CPU device: bf16 weights give the numpy path's eigenvalues of the same values."""
    weights = torch.randn(90, 40, generator=torch.Generator().manual_seed(4)).bfloat16()
    ours = spectra.torch_eigenvalues(weights, torch.device("cpu"))
    np.testing.assert_allclose(ours, eigenvalues(weights.float().numpy()), rtol=1e-10)
    bad = weights.clone()
    bad[5, 5] = float("nan")
    with pytest.raises(NonFiniteError):
        spectra.torch_eigenvalues(bad, torch.device("cpu"))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_raise(bad, solver):
    matrix = np.ones((20, 10))
    matrix[3, 4] = bad
    with pytest.raises(NonFiniteError):
        eigenvalues(matrix)


def test_submatrix_sampling_is_reproducible_and_without_replacement():
    matrix = np.arange(200 * 50, dtype=np.float64).reshape(200, 50)
    first = sample_submatrix(matrix, 30, 20, sample_generator(7, "layer", 0))
    again = sample_submatrix(matrix, 30, 20, sample_generator(7, "layer", 0))
    other = sample_submatrix(matrix, 30, 20, sample_generator(7, "layer", 1))
    assert first.shape == (30, 20)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    rows = first[:, 0] // 50
    cols = first[0] % 50
    assert len(set(rows)) == 30 and len(set(cols)) == 20  # no row or column twice
    assert not (rows == np.arange(30)).all()  # not the top-left crop
