import numpy as np
import pytest
import torch

from alphasel import analyze
from alphasel.cli import main
from alphasel.downsample import parse_downsampling, resolve_shape, sample_shape_for
from alphasel.errors import AnalysisOptionError

SHAPES = {"square": (256, 256), "wide": (256, 768), "gqa": (64, 256)}


def student_t_model(seed: int = 0) -> torch.nn.Module:
    """Three matrices with the same heavy-tailed entry distribution and different shapes."""
    rng = np.random.default_rng(seed)
    model = torch.nn.ModuleDict()
    for name, (rows, cols) in SHAPES.items():
        layer = torch.nn.Linear(cols, rows, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(rng.standard_t(3.0, size=(rows, cols))))
        model[name] = layer
    return model


@pytest.mark.parametrize("estimator", ["median", "ks"])
def test_common_shape_removes_the_shape_effect(estimator):
    model = student_t_model()
    raw = analyze(model, estimator, progress=False).set_index("name")["alpha"]
    sampled = analyze(model, estimator, downsample="common", samples=20, seed=0,
                      progress=False).set_index("name")
    # Raw alphas of one entry distribution differ with the shape ...
    raw_gap = raw.max() - raw.min()
    # ... sampled to one shape (64×256, the smallest), they agree within their spread.
    sampled_gap = sampled["alpha"].max() - sampled["alpha"].min()
    spread = sampled["alpha_std"].max()
    assert sampled_gap < spread
    assert raw_gap > 3 * sampled_gap
    assert raw_gap > 0.8  # measured: median 2.07/2.96/3.02 raw; ks 5.48/6.53/5.12
    assert (sampled["samples"] == 20).all()


def test_draws_are_reproducible_per_seed():
    model = student_t_model()
    first = analyze(model, downsample="fixed:128x64", samples=3, seed=5, progress=False)
    again = analyze(model, downsample="fixed:64x128", samples=3, seed=5, progress=False)
    other = analyze(model, downsample="fixed:128x64", samples=3, seed=6, progress=False)
    np.testing.assert_array_equal(first["alpha"], again["alpha"])  # orientation-free shape
    assert not np.array_equal(first["alpha"], other["alpha"])
    meta = first.attrs["alphasel"]["downsample"]
    assert meta == {"mode": "fixed", "shape": [128, 64], "samples": 3, "seed": 5}
    assert {"alpha_std", "samples"} <= set(first.columns)


def test_common_shape_is_the_smallest_sides_among_analysed_matrices():
    shapes = {"q": (576, 576), "k": (192, 576), "up": (1536, 576), "down": (576, 1536)}
    resolved = resolve_shape(parse_downsampling("common"), shapes)
    assert resolved.shape == (576, 192)
    assert sample_shape_for((192, 576), resolved.shape) == (192, 576)
    assert sample_shape_for((1536, 576), resolved.shape) == (576, 192)


@pytest.mark.parametrize(("mode", "samples", "message"), [
    ("fixed:100", 1, "unknown downsampling mode"),
    ("common:3", 1, "unknown downsampling mode"),
    ("fixed:0x10", 1, "at least 1x1"),
    ("common", 0, "--samples must be an integer ≥ 1"),
])
def test_malformed_options(mode, samples, message):
    with pytest.raises(AnalysisOptionError, match=message):
        parse_downsampling(mode, samples)


def test_non_finite_weights_are_caught_even_when_samples_miss_them():
    model = student_t_model()
    with torch.no_grad():
        model["wide"].weight[0, 0] = float("nan")
    table = analyze(model, downsample="fixed:64x64", samples=2, progress=False)
    row = table.set_index("name").loc["wide"]
    assert row["status"] == "non-finite weights (1 NaN/inf entries)"
    assert np.isnan(row["alpha"])


def test_fixed_shape_larger_than_a_matrix_names_it():
    with pytest.raises(AnalysisOptionError, match="larger than gqa 64x256"):
        analyze(student_t_model(), downsample="fixed:200x100", progress=False)


@pytest.mark.parametrize("args", [["--downsample", "fixed:999x999"], ["--samples", "0",
                                  "--downsample", "common"], ["--downsample", "half"]])
def test_cli_bad_downsampling_is_exit_2_without_output(args, tmp_path, runs, capsys):
    from safetensors.torch import save_file

    save_file({f"{name}.weight": layer.weight.detach().contiguous()
               for name, layer in student_t_model().items()}, tmp_path / "m.safetensors")
    out = tmp_path / "alpha.csv"
    code = main(["analyze", str(tmp_path / "m.safetensors"), *args, "--out", str(out),
                 "--quiet"])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()
