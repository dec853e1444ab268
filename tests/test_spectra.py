import numpy as np
import pytest
import torch

from alphasel import spectra
from alphasel.spectra import (
    NonFiniteError,
    eigenvalues,
    gram_matrix,
    sample_generator,
    sample_submatrix,
)


@pytest.mark.parametrize("shape", [(120, 40), (40, 120), (64, 64)])
def test_eigenvalues_are_squared_singular_values(shape):
    matrix = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = np.sort(np.linalg.svd(matrix.astype(np.float64), compute_uv=False) ** 2)
    ours = eigenvalues(matrix)
    assert ours.shape == (min(shape),)
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-10 * expected.max())


def test_torch_input_and_chunked_gram_agree(monkeypatch):
    matrix = np.random.default_rng(1).standard_normal((300, 50))
    direct = matrix.T @ matrix
    with monkeypatch.context() as patch:
        patch.setattr(spectra, "_GRAM_CHUNK_ELEMENTS", 7 * 50)  # several slices of 7
        for layout in (matrix, matrix.T, np.asfortranarray(matrix.T)):
            np.testing.assert_allclose(gram_matrix(layout), direct, rtol=1e-12)
    np.testing.assert_allclose(gram_matrix(matrix), direct, rtol=1e-12)  # one slice
    np.testing.assert_allclose(eigenvalues(torch.from_numpy(matrix)), eigenvalues(matrix))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_raise(bad):
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
