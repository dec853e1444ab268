import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ANALYSIS_LLAMA, tiny_gpt2, tiny_llama
from safetensors.torch import save_file

from alphasel import analyze
from alphasel.analyzer import schedule, usable_cores
from alphasel.columns import COLUMNS, STATUS_OK
from alphasel.errors import AnalysisOptionError
from alphasel.spectra import working_bytes


def test_table_for_an_in_memory_llama():
    model = tiny_llama(layers=2, **ANALYSIS_LLAMA)
    table = analyze(model, progress=False)
    assert list(table.columns) == COLUMNS
    # 2 blocks × 7 linears + embedding + head
    assert len(table) == 16
    assert table["name"].is_unique
    row = table.set_index("name").loc["model.layers.1.self_attn.k_proj"]
    assert (row["block"], row["kind"], row["rows"], row["cols"]) == (1, "k", 16, 32)
    assert table.loc[table["kind"] == "embed", "block"].isna().all()
    fitted = table[table["status"] == STATUS_OK]
    assert len(fitted) == 16
    assert (fitted["alpha"] > 1).all() and (fitted["D"] > 0).all()
    assert (fitted["num_pl_spikes"] <= fitted["num_evals"]).all()
    meta = table.attrs["alphasel"]
    assert meta["estimator"] == "ks" and meta["num_matrices"] == 16
    assert meta["versions"]["alphasel"]
    assert meta["elapsed_s"] >= 0


def test_metrics_follow_their_definitions():
    model = torch.nn.Sequential(torch.nn.Linear(40, 120, bias=False))
    table = analyze(model, progress=False)
    weight = model[0].weight.detach().double().numpy()
    evals = np.linalg.svd(weight, compute_uv=False) ** 2
    row = table.iloc[0]
    assert row["num_evals"] == 40
    assert row["log_norm"] == pytest.approx(np.log10(evals.sum()), rel=1e-10)
    assert row["log_spectral_norm"] == pytest.approx(np.log10(evals.max()), rel=1e-10)
    assert row["stable_rank"] == pytest.approx(evals.sum() / evals.max(), rel=1e-10)
    assert row["alpha_weighted"] == pytest.approx(row["alpha"] * np.log10(evals.max()))
    assert row["num_pl_spikes"] == int((evals >= row["xmin"] * (1 - 1e-12)).sum())


def test_bad_matrices_get_a_status_row_not_a_crash():
    model = torch.nn.ModuleDict({
        "good": torch.nn.Linear(64, 64, bias=False),
        "nan": torch.nn.Linear(64, 64, bias=False),
        "zero": torch.nn.Linear(64, 64, bias=False),
        "tiny": torch.nn.Linear(5, 64, bias=False),
        "identity": torch.nn.Linear(64, 64, bias=False),
    })
    with torch.no_grad():
        model["nan"].weight[3, 3] = float("nan")
        model["nan"].weight[4, 4] = float("inf")
        model["zero"].weight.zero_()
        model["identity"].weight.copy_(2.0 * torch.eye(64))  # 64 equal eigenvalues: no tail
    table = analyze(model, progress=False).set_index("name")
    assert table.loc["good", "status"] == STATUS_OK
    assert table.loc["nan", "status"] == "non-finite weights (2 NaN/inf entries)"
    assert table.loc["zero", "status"].startswith("all-zero spectrum")
    assert table.loc["tiny", "status"] == "too few eigenvalues (5 < min_evals 10)"
    assert table.loc["identity", "status"].startswith("no power-law tail")
    assert table.loc[["nan", "zero", "tiny", "identity"], "alpha"].isna().all()


def test_include_exclude_and_their_errors():
    model = tiny_llama(layers=2, **ANALYSIS_LLAMA)
    table = analyze(model, include=[r"self_attn\.(q|k)_proj"], exclude=["layers\\.0\\."],
                    progress=False)
    assert sorted(table["name"]) == ["model.layers.1.self_attn.k_proj",
                                     "model.layers.1.self_attn.q_proj"]
    with pytest.raises(AnalysisOptionError, match="not a valid regular expression"):
        analyze(model, include=["("], progress=False)
    with pytest.raises(AnalysisOptionError, match="no weight matrix"):
        analyze(model, include=["nothing-matches"], progress=False)


def test_results_do_not_depend_on_workers():
    model = tiny_llama(layers=3, **ANALYSIS_LLAMA)
    one = analyze(model, workers=1, progress=False)
    two = analyze(model, workers=2, progress=False)
    pd.testing.assert_frame_equal(one, two)


def test_half_precision_checkpoint_matches_its_float32_twin(tmp_path):
    weight = torch.randn(96, 48, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    save_file({"model.layers.0.mlp.up_proj.weight": weight}, tmp_path / "bf16.safetensors")
    save_file({"model.layers.0.mlp.up_proj.weight": weight.float()},
              tmp_path / "f32.safetensors")
    half = analyze(tmp_path / "bf16.safetensors", progress=False)
    full = analyze(tmp_path / "f32.safetensors", progress=False)
    assert half["alpha"].iloc[0] == full["alpha"].iloc[0]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("estimator", "mle", "unknown estimator"),
    ("device", "tpu", "unknown device"),
    ("min_evals", 1, "min-evals"),
    ("downsample", "half", "unknown downsampling mode"),
    ("workers", 0, "--workers must be ≥ 1"),
])
def test_bad_options_are_named(option, value, message):
    with pytest.raises(AnalysisOptionError, match=message):
        analyze(tiny_llama(layers=1, **ANALYSIS_LLAMA), progress=False, **{option: value})


def test_gpt2_conv1d_and_fused_attention():
    model = tiny_gpt2(head=False, vocab_size=80, positions=40)
    table = analyze(model, progress=False).set_index("name")
    # Conv1D stores weights as in × out; the table keeps the stored shape.
    assert (table.loc["h.1.attn.c_attn", ["block", "kind", "rows", "cols"]].tolist()
            == [1, "qkv", 32, 96])
    assert table.loc["h.0.mlp.c_proj", "kind"] == "down"
    assert table.loc["h.0.attn.c_proj", "kind"] == "o"
    assert table.loc["wte", "kind"] == "embed"
    assert (table["status"] == STATUS_OK).all()


def test_a_failing_read_stops_the_analysis_promptly(monkeypatch):
    """With the read budget full of matrices whose fits were cancelled, the reader must not
    wait forever: the error reaches the caller and the workers shut down."""
    import threading
    import time

    from alphasel import analyzer
    from alphasel.errors import SourceError
    from alphasel.sources.module import ModuleSource

    model = torch.nn.ModuleDict({f"m{i}": torch.nn.Linear(64, 64, bias=False)
                                 for i in range(12)})
    original = ModuleSource.load

    def load(self, ref):
        if ref.name == "m3":
            raise SourceError("tensor m3 is corrupt")
        return original(self, ref)

    monkeypatch.setattr(ModuleSource, "load", load)
    slow_fit = analyzer.analyze_matrix

    def fit(*args, **kwargs):
        time.sleep(0.05)  # the reader runs ahead and fills the budget before m3 is reached
        return slow_fit(*args, **kwargs)

    monkeypatch.setattr(analyzer, "analyze_matrix", fit)
    # Room for two matrices: the reader blocks behind loaded, not yet fitted ones.
    room_gb = 2 * working_bytes((64, 64)) / 1e9
    outcome = []

    def run():
        try:
            analyze(model, progress=False, workers=1, memory_gb=room_gb)
        except SourceError as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "analysis hung after a read failed"
    assert len(outcome) == 1 and "m3" in str(outcome[0])


def _spread(*args, **kwargs) -> tuple[int, int]:
    plan = schedule(*args, **kwargs)
    return plan.workers, plan.blas_threads


def test_schedule_spreads_cores_by_matrix_size_and_memory():
    llama_mlp, small = (11008, 4096), (576, 576)
    one_mlp = working_bytes(llama_mlp)
    assert 500e6 < one_mlp < 700e6  # float32 + bf16 read + Gram + copy + one slice
    # Enough memory: a matrix per core, one BLAS thread each.
    assert _spread([llama_mlp] * 7, 2, 12 * 10**9) == (2, 1)
    assert _spread([llama_mlp] * 40, 16, 64 * 10**9) == (16, 1)
    # Memory for one large matrix only: it runs alone with every core's BLAS thread.
    assert _spread([llama_mlp, small], 2, one_mlp + 1) == (1, 2)
    assert _spread([llama_mlp] * 40, 16, 4 * one_mlp) == (4, 4)
    # Fewer matrices than cores: one worker each, the cores' threads shared out.
    assert _spread([small] * 3, 16, 10**9) == (3, 5)
    assert _spread([llama_mlp] * 7, 16, 64 * 10**9) == (7, 2)
    # An explicit worker count is kept.
    assert _spread([llama_mlp] * 7, 2, one_mlp, workers=2) == (2, 1)


def test_analysis_records_its_schedule_and_refuses_bad_memory():
    model = torch.nn.Sequential(*[torch.nn.Linear(40, 30 + i) for i in range(4)])
    table = analyze(model, progress=False, memory_gb=working_bytes((40, 33)) / 1e9)
    meta = table.attrs["alphasel"]
    assert (meta["workers"], meta["blas_threads"]) == (1, usable_cores())
    assert meta["eigensolver"]
    wide = analyze(model, progress=False).attrs["alphasel"]
    assert wide["workers"] == min(4, usable_cores())
    # How the work is spread changes no result.
    np.testing.assert_allclose(table["alpha"], analyze(model, progress=False)["alpha"],
                               rtol=1e-12)
    for bad in (0, -1.5, "2"):
        with pytest.raises(AnalysisOptionError, match="--memory-gb"):
            analyze(model, progress=False, memory_gb=bad)


@pytest.mark.parametrize("layout", ["model.safetensors", "pytorch_model.bin", "module"])
def test_device_path_reads_stored_precision_and_matches_the_cpu_path(tmp_path, monkeypatch,
                                                                      layout):
    """The GPU path (bf16 read as stored, upcast to float64 on the device, two workers so a
    read overlaps the device's work), run on torch's CPU device as 'cpu:0' since tests have no
    GPU: every alpha equals the numpy/LAPACK path's."""
    from alphasel import analyzer
    from alphasel.sources.files import SafetensorsSource, TorchBinSource
    from alphasel.sources.module import ModuleSource

    model = tiny_llama(**ANALYSIS_LLAMA).bfloat16()
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if layout == "module":
        source, kind = model, ModuleSource
    elif layout.endswith(".bin"):
        torch.save(state, tmp_path / layout)
        source, kind = tmp_path, TorchBinSource
    else:
        save_file(state, tmp_path / layout)
        source, kind = tmp_path, SafetensorsSource
    stored = []
    original = kind.load_stored

    def load_stored(self, ref):
        matrix = original(self, ref)
        stored.append(matrix.dtype)
        return matrix

    monkeypatch.setattr(kind, "load_stored", load_stored)
    monkeypatch.setattr(analyzer, "check_device", lambda device: device)
    on_device = analyze(source, device="cpu:0", progress=False, cache=False)
    assert set(stored) == {torch.bfloat16} and len(stored) == len(on_device)
    assert on_device.attrs["alphasel"]["workers"] == 2
    cpu = analyze(source, progress=False, cache=False)
    assert (on_device["status"] == STATUS_OK).all()
    np.testing.assert_allclose(on_device["alpha"], cpu["alpha"], rtol=1e-9)


@pytest.mark.parametrize("device", ["gpu", "cpu:0", "cuda:x", "cuda", "cuda:3"])
def test_unusable_devices_are_refused_in_one_line(device):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(AnalysisOptionError, match="device") as caught:
        analyze(torch.nn.Linear(20, 20), device=device, progress=False)
    assert "\n" not in str(caught.value)


def test_work_starts_with_each_blocks_costliest_matrices():
    from alphasel.analyzer import _work_order
    from alphasel.sources import MatrixRef

    shapes = {"model.embed_tokens": (32000, 4096),
              "model.layers.0.self_attn.q_proj": (4096, 4096),
              "model.layers.0.mlp.up_proj": (11008, 4096),
              "model.layers.0.mlp.down_proj": (4096, 11008),
              "model.layers.1.self_attn.k_proj": (1024, 4096),
              "model.layers.1.mlp.up_proj": (11008, 4096)}
    refs = [MatrixRef(name, shape, name) for name, shape in shapes.items()]
    order = [refs[index].name.removeprefix("model.") for index in _work_order(refs)]
    assert order == ["embed_tokens", "layers.0.mlp.up_proj", "layers.0.mlp.down_proj",
                     "layers.0.self_attn.q_proj", "layers.1.mlp.up_proj",
                     "layers.1.self_attn.k_proj"]


def test_core_share_gives_gram_matrices_the_cores_eigensolves_leave():
    from alphasel import lapack

    if lapack.routines() is None or lapack.routines().set_local_threads is None:
        pytest.skip("numpy here has no OpenBLAS with per-thread thread counts")
    share = lapack.CoreShare(cores=4, threads=1)
    seen = []
    share._set = seen.append  # record the thread counts instead of setting them
    with share.gram():
        share.gram_slice()
        with share.eigensolve():  # another worker's eigensolve starts meanwhile
            share.gram_slice()
    assert seen == [4, 1, 3, 1, 1]  # all 4; eigensolve 1; 4 - 1; back to 1 twice
