"""The GPU path without a GPU: its torch code run on torch's CPU device, and torch.cuda mocked
where the analyzer asks it about devices and their memory."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ANALYSIS_LLAMA, tiny_llama
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

from alphasel import analyze, spectra
from alphasel.columns import STATUS_OK
from alphasel.errors import AnalysisOptionError
from alphasel.spectra import check_device, device_working_bytes, torch_eigenvalues

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_gpus(monkeypatch) -> list:
    """torch.cuda as on a machine with two GPUs, 1 GB free on each; returns the devices whose
    free memory was asked for."""
    asked = []

    def mem_get_info(device=None):
        asked.append(device)
        return 10**9, 2 * 10**9

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    return asked


def on_cpu(function):
    """``function``(matrix, device) with the device's work done on torch's CPU device."""
    return lambda matrix, device: function(matrix, torch.device("cpu"))


class Float64Sizes(TorchFunctionMode):
    """Records the number of entries of every float64 tensor torch functions return."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor) and result.dtype == torch.float64:
            self.sizes.append(result.numel())
        return result


# ---- the Gram matrix on the device ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(300, 50), (50, 300), (301, 50), (40, 40)])
def test_device_gram_matrix_is_built_from_float64_slices(monkeypatch, shape):
    """No float64 copy of the whole matrix: the largest float64 tensor is the Gram matrix or a
    slice, and the eigenvalues equal the unchunked float64 ones."""
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    wide = matrix.double()
    reference = torch.linalg.eigvalsh(wide.T @ wide if shape[0] >= shape[1] else wide @ wide.T)
    side = min(shape)
    monkeypatch.setattr(spectra, "_GRAM_CHUNK_ELEMENTS", 7 * side)  # slices of 7
    with Float64Sizes() as recorded:
        ours = torch_eigenvalues(matrix, torch.device("cpu"))
    np.testing.assert_allclose(ours, reference.numpy(), rtol=0,
                               atol=1e-12 * float(reference.max()))
    assert max(recorded.sizes) <= max(side * side, 7 * side)
    # One slice, no accumulation: the same eigenvalues.
    monkeypatch.setattr(spectra, "_GRAM_CHUNK_ELEMENTS", matrix.numel())
    np.testing.assert_allclose(torch_eigenvalues(matrix, torch.device("cpu")), ours,
                               rtol=0, atol=1e-12 * float(reference.max()))


def test_device_working_bytes_count_copy_gram_solver_and_slice():
    rows, cols = 11008, 4096
    gram = 8 * cols * cols
    assert device_working_bytes((rows, cols)) == (4 * rows * cols + 3 * gram
                                                  + 8 * spectra._GRAM_CHUNK_ELEMENTS)
    assert device_working_bytes((cols, rows)) == device_working_bytes((rows, cols))


def test_cpu_path_takes_half_precision_tensors():
    """What a matrix the GPU cannot fit falls back to: a bf16 tensor as stored."""
    matrix = torch.randn(60, 20, generator=torch.Generator().manual_seed(1)).bfloat16()
    np.testing.assert_allclose(spectra.eigenvalues(matrix),
                               spectra.eigenvalues(matrix.float().numpy()), rtol=1e-12)


# ---- devices ----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cuda:", "cuda:00", "cuda:01", "cuda:-1", "cuda:1x",
                                    "cuda:\u0660", " cuda", "cuda ", "cuda\n", "CPU:0",
                                    "Cuda", "cpu:0", "gpu", "cuda:2", ""])
def test_only_canonical_devices_pass(two_gpus, device):
    with pytest.raises(AnalysisOptionError, match="device") as caught:
        check_device(device)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:1"])
def test_canonical_devices_pass(two_gpus, device):
    assert check_device(device) == device


# ---- the analyzer on a (mocked) GPU -----------------------------------------------------------

def _layers() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(48, 40 + i) for i in range(4)])


def test_out_of_device_memory_falls_back_to_the_cpu(two_gpus, monkeypatch):
    model = _layers()
    original = spectra.torch_eigenvalues

    def torch_eigenvalues(matrix, device):
        assert device == torch.device("cuda:1")
        if tuple(matrix.shape) == (42, 48):  # layer 2
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(matrix, torch.device("cpu"))

    monkeypatch.setattr(spectra, "torch_eigenvalues", torch_eigenvalues)
    with pytest.warns(UserWarning, match=r"^2: out of memory on cuda:1, .* on the CPU") as caught:
        table = analyze(model, device="cuda:1", progress=False, cache=False)
    assert len(caught) == 1
    assert (table["status"] == STATUS_OK).all()
    cpu = analyze(model, progress=False, cache=False)
    np.testing.assert_allclose(table["alpha"], cpu["alpha"], rtol=1e-12)
    assert two_gpus == [torch.device("cuda:1")]


def _most_on_device_at_once(monkeypatch, device_free: int) -> int:
    """How many matrices an analysis on 'cuda' holds on the device at once, given its free
    memory."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (device_free, 2**40))
    inside, most, lock = [0], [0], threading.Lock()
    original = spectra.torch_eigenvalues

    def torch_eigenvalues(matrix, device):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)  # long enough for the other worker to arrive
        try:
            return original(matrix, torch.device("cpu"))
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(spectra, "torch_eigenvalues", torch_eigenvalues)
    table = analyze(_layers(), device="cuda", progress=False, cache=False)
    assert (table["status"] == STATUS_OK).all()
    assert table.attrs["alphasel"]["workers"] == 2
    return most[0]


def test_matrices_wait_for_room_in_device_memory(two_gpus, monkeypatch):
    from alphasel import analyzer

    largest = device_working_bytes((43, 48))
    share = analyzer._DEVICE_MEMORY_SHARE
    assert _most_on_device_at_once(monkeypatch, int(1.5 * largest / share)) == 1
    assert _most_on_device_at_once(monkeypatch, int(10 * largest / share)) == 2


# ---- analysis/bench_scale.py ------------------------------------------------------------------

@pytest.fixture
def bench_scale(monkeypatch):
    monkeypatch.syspath_prepend(str(REPOSITORY))
    from analysis import bench_scale

    return bench_scale


def test_benchmark_reads_and_warms_the_device_it_was_given(bench_scale, monkeypatch):
    calls = []

    def record(what):
        return lambda device=None: calls.append((what, device)) or 2**21

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", record("peak"))
    monkeypatch.setattr(torch.cuda, "synchronize", record("synchronize"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", record("reset"))
    monkeypatch.setattr(bench_scale, "torch_eigenvalues",
                        lambda matrix, device: calls.append(("eigenvalues", device)))
    bench_scale.warm_up("cuda:1")
    assert bench_scale.gpu_peak_mb("cuda:1") == 2.0
    gpu = torch.device("cuda", 1)
    assert calls == [("eigenvalues", gpu), ("synchronize", gpu), ("reset", gpu), ("peak", gpu)]
    calls.clear()
    bench_scale.warm_up("cpu")
    assert bench_scale.gpu_peak_mb("cpu") is None and calls == []
    child = bench_scale._CHILD
    assert child.index("warm_up(") < child.index("started =")


def test_benchmark_child_runs_from_any_directory(bench_scale, tmp_path, monkeypatch):
    model = tiny_llama(layers=1, **ANALYSIS_LLAMA)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()},
              tmp_path / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    result, table = bench_scale.analyze_in_child(tmp_path)
    assert result["gpu_peak_mb"] is None and result["elapsed_s"] > 0
    assert (table["status"] == STATUS_OK).all() and len(table) == 9
