"""alphasel's default analysis equals WeightWatcher 0.7.7's analyze() on the packaged real
models: every matrix both report, alpha and xmin within 1e-6 relative."""

import logging

import numpy as np
import pytest

from alphasel import analyze, lapack, spectra
from alphasel.sources import packaged_model

pytestmark = pytest.mark.integration


def _weightwatcher_table(model):
    import weightwatcher

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    return weightwatcher.WeightWatcher(model=model).analyze()


def _compare(ours, reference, prefix=""):
    reference = reference.assign(name=prefix + reference["longname"]).set_index("name")
    ours = ours.set_index("name")
    shared = reference.index.intersection(ours.index)
    assert len(shared) == len(reference)  # every matrix WeightWatcher reports, we report
    for column in ("alpha", "xmin"):
        relative = np.abs(ours.loc[shared, column] - reference.loc[shared, column]) / np.abs(
            reference.loc[shared, column])
        assert relative.max() < 1e-6, (column, relative.idxmax(), relative.max())
    assert (ours.loc[shared, "num_pl_spikes"] == reference.loc[shared, "num_pl_spikes"]).all()
    return shared


def test_minilm_matches_weightwatcher():
    from transformers import AutoModel

    path, _ = packaged_model("minilm")
    reference = _weightwatcher_table(AutoModel.from_pretrained(path))
    shared = _compare(analyze("minilm", progress=False), reference)
    assert len(shared) == 39


@pytest.fixture(scope="module")
def smollm2_reference():
    from transformers import AutoModel

    path, _ = packaged_model("smollm2")
    # transformers dequantizes the GGUF on its own (its loader, its name mapping): an
    # independent reading of the same file.
    model = AutoModel.from_pretrained(path.parent, gguf_file=path.name)
    return _weightwatcher_table(model)


def test_smollm2_matches_weightwatcher(smollm2_reference):
    shared = _compare(analyze("smollm2", progress=False), smollm2_reference, prefix="model.")
    assert len(shared) == 211


def test_two_stage_eigensolver_matches_weightwatcher(smollm2_reference, monkeypatch):
    """SmolLM2's Gram matrices (≤ 576) are below the size where dsyrk + dsyevd_2stage take
    over; here every matrix goes through them, and the KS fit still picks WeightWatcher's xmin."""
    if lapack.routines() is None:
        pytest.skip("numpy here does not use OpenBLAS")
    monkeypatch.setattr(spectra, "_LAPACK_MIN_SIZE", 2)
    ours = analyze("smollm2", progress=False, cache=False)
    assert len(_compare(ours, smollm2_reference, prefix="model.")) == 211
