"""The per-matrix result cache: repeats are read back exactly, any change is a miss, an
interrupted analysis resumes, and concurrent analyses leave only whole entries."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import gguf
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ANALYSIS_LLAMA, tiny_llama, write_gguf
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from threadpoolctl import threadpool_limits

from alphasel import analyze, analyzer
from alphasel.cache import ResultCache, cache_dir
from alphasel.cli import main


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    model = tiny_llama(layers=2, seed=seed, **ANALYSIS_LLAMA)
    # lm_head is tied to the embedding; safetensors refuses shared tensors.
    return {name: tensor.contiguous() for name, tensor in model.state_dict().items()
            if name != "lm_head.weight"}


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A 2-block Llama as one safetensors file: 15 matrices, all fitted."""
    path = tmp_path / "ckpt" / "model.safetensors"
    path.parent.mkdir()
    save_file(_state(), path)
    return path


def _gguf_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    q8 = gguf.GGMLQuantizationType.Q8_0
    tensors = {f"blk.{block}.{name}.weight": (rng.standard_normal((64, 96), np.float32), q8)
               for block in (0, 1) for name in ("attn_q", "ffn_up")}
    return write_gguf(tmp_path / "model.gguf", tensors)


def _bin_file(tmp_path: Path) -> Path:
    path = tmp_path / "pytorch_model.bin"
    torch.save(_state(), path)
    return path


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.json"))


@pytest.fixture
def fit_calls(monkeypatch) -> list[str]:
    """The names of the matrices the analyzer fits (not read from the cache)."""
    calls = []
    fit = analyzer.analyze_matrix

    def counting(matrix, name, *args, **kwargs):
        calls.append(name)
        return fit(matrix, name, *args, **kwargs)

    monkeypatch.setattr(analyzer, "analyze_matrix", counting)
    return calls


@pytest.mark.parametrize("make", ["safetensors", "gguf", "bin"])
def test_a_repeat_is_read_from_the_cache_with_an_identical_table(make, checkpoint, tmp_path,
                                                                 alpha_cache, fit_calls):
    path = {"safetensors": lambda: checkpoint, "gguf": lambda: _gguf_file(tmp_path),
            "bin": lambda: _bin_file(tmp_path)}[make]()
    first = analyze(path, progress=False)
    fitted = len(fit_calls)
    assert fitted == len(first) >= 4 and first.attrs["alphasel"]["cached"] == 0
    assert len(_entries(alpha_cache)) == fitted
    second = analyze(path, progress=False)
    assert len(fit_calls) == fitted  # nothing fitted again
    assert second.attrs["alphasel"]["cached"] == fitted
    assert second.attrs["alphasel"]["cache"] == str(alpha_cache)
    pd.testing.assert_frame_equal(first, second)


def test_a_downsampled_repeat_is_identical_too(checkpoint, fit_calls):
    options = dict(downsample="common", samples=3, seed=5, progress=False)
    first = analyze(checkpoint, **options)
    second = analyze(checkpoint, **options)
    assert second.attrs["alphasel"]["cached"] == len(first) == len(fit_calls)
    assert {"alpha_std", "samples"} <= set(second.columns)
    pd.testing.assert_frame_equal(first, second)


def test_non_finite_floats_and_numpy_scalars_round_trip_exactly(tmp_path):
    cache = ResultCache(tmp_path)
    key = {"name": "m", "tensor": {"offset": 8}}
    result = {"alpha": np.float64(0.1 + 0.2), "D": float("nan"), "sigma": float("inf"),
              "xmin": -math.inf, "num_pl_spikes": np.int64(7), "status": "ok"}
    cache.put(key, result)
    json.loads(cache.path(key).read_text())  # standard JSON: no NaN tokens
    assert "NaN" not in cache.path(key).read_text()
    stored = cache.get(key)
    assert stored["alpha"] == 0.1 + 0.2 and math.isnan(stored["D"])
    assert stored["sigma"] == math.inf and stored["xmin"] == -math.inf
    assert stored["num_pl_spikes"] == 7 and stored["status"] == "ok"
    assert cache.get({**key, "name": "other"}) is None


def test_a_status_row_without_a_fit_is_cached_as_it_is(tmp_path, fit_calls):
    state = _state()
    state["model.layers.0.mlp.up_proj.weight"][3, 3] = float("nan")
    state["model.layers.1.mlp.up_proj.weight"].zero_()
    path = tmp_path / "bad.safetensors"
    save_file(state, path)
    first = analyze(path, progress=False)
    second = analyze(path, progress=False)
    assert second.attrs["alphasel"]["cached"] == len(first)
    assert (first["status"] != "ok").sum() == 2
    pd.testing.assert_frame_equal(first, second)


def test_a_changed_file_is_a_miss(checkpoint, fit_calls):
    first = analyze(checkpoint, progress=False)
    state = _state()
    state["model.layers.0.self_attn.q_proj.weight"] *= 3.0  # same size, other values
    save_file(state, checkpoint)
    stat = checkpoint.stat()
    # A rewrite within one clock tick can keep the mtime; the test needs it to move.
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = analyze(checkpoint, progress=False)
    assert again.attrs["alphasel"]["cached"] == 0 and len(fit_calls) == 2 * len(first)
    fresh = analyze(checkpoint, progress=False, cache=False)
    pd.testing.assert_frame_equal(again, fresh)
    q_proj = first["name"] == "model.layers.0.self_attn.q_proj"
    assert (again.loc[q_proj, "log_norm"] != first.loc[q_proj, "log_norm"]).all()


def test_a_touched_file_is_a_miss(checkpoint):
    analyze(checkpoint, progress=False)
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert analyze(checkpoint, progress=False).attrs["alphasel"]["cached"] == 0


@pytest.mark.parametrize(("changed", "hits"), [
    (dict(estimator="median"), False),
    (dict(min_evals=12), False),
    (dict(downsample="common", seed=1), False),
    (dict(workers=1), True),  # how the work is spread changes no result
    (dict(include="mlp"), True),  # a filtered analysis reuses the matrices it keeps
])
def test_an_option_that_changes_results_is_a_miss(changed, hits, checkpoint):
    base = dict(downsample="common", seed=0) if "seed" in changed else {}
    analyze(checkpoint, progress=False, **base)
    table = analyze(checkpoint, progress=False, **{**base, **changed})
    assert table.attrs["alphasel"]["cached"] == (len(table) if hits else 0)


def test_an_interrupted_analysis_resumes_where_it_stopped(checkpoint, alpha_cache,
                                                          monkeypatch):
    fit = analyzer.analyze_matrix
    calls, stop_after = [], [5]

    def fitting(matrix, name, *args, **kwargs):
        calls.append(name)
        if stop_after[0] is not None and len(calls) > stop_after[0]:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the analysis
        return fit(matrix, name, *args, **kwargs)

    monkeypatch.setattr(analyzer, "analyze_matrix", fitting)
    with pytest.raises(KeyboardInterrupt):
        analyze(checkpoint, progress=False, workers=1)
    assert len(_entries(alpha_cache)) == 5
    done = calls[:5]

    calls.clear()
    stop_after[0] = None
    resumed = analyze(checkpoint, progress=False, workers=1)
    assert resumed.attrs["alphasel"]["cached"] == 5
    assert len(calls) == len(resumed) - 5 and not set(calls) & set(done)
    pd.testing.assert_frame_equal(resumed, analyze(checkpoint, progress=False, cache=False))


def test_no_cache_neither_reads_nor_writes(checkpoint, tmp_path, alpha_cache, capsys):
    out = tmp_path / "alpha.csv"
    assert main(["analyze", str(checkpoint), "--no-cache", "--quiet", "--out", str(out)]) == 0
    assert _entries(alpha_cache) == [] and list(alpha_cache.iterdir()) == []
    analyze(checkpoint, progress=False)
    table = analyze(checkpoint, progress=False, cache=False)
    assert table.attrs["alphasel"]["cached"] == 0 and table.attrs["alphasel"]["cache"] is None
    assert "from cache" not in capsys.readouterr().out


def test_the_cli_says_how_many_fits_came_from_the_cache(checkpoint, tmp_path, capsys):
    out = tmp_path / "alpha.csv"
    assert main(["analyze", str(checkpoint), "--quiet", "--out", str(out)]) == 0
    assert "from cache" not in capsys.readouterr().out
    assert main(["analyze", str(checkpoint), "--quiet", "--out", str(out)]) == 0
    assert "15 from cache" in capsys.readouterr().out


def test_a_corrupt_entry_is_recomputed_and_overwritten(checkpoint, alpha_cache, fit_calls):
    first = analyze(checkpoint, progress=False)
    entries = _entries(alpha_cache)
    entries[0].write_text('{"schema": 1, "key": {"na')  # torn (written by hand)
    entries[1].write_bytes(b"")
    other = json.loads(entries[2].read_text())
    other["result"] = {"alpha": "not a number", "status": 3}
    entries[2].write_text(json.dumps(other))
    entries[3].write_bytes(b"\xff\xfe not utf-8")
    fit_calls.clear()
    second = analyze(checkpoint, progress=False)
    assert len(fit_calls) == 4 and second.attrs["alphasel"]["cached"] == len(first) - 4
    pd.testing.assert_frame_equal(first, second)
    for entry in entries[:4]:
        assert json.loads(entry.read_text())["result"]["status"] == "ok"
    assert analyze(checkpoint, progress=False).attrs["alphasel"]["cached"] == len(first)


def test_an_entry_under_another_key_is_a_miss(tmp_path):
    cache = ResultCache(tmp_path)
    key, other = {"name": "a"}, {"name": "b"}
    cache.put(other, {"alpha": 2.0, "status": "ok"})
    cache.path(key).parent.mkdir(parents=True, exist_ok=True)
    cache.path(other).rename(cache.path(key))  # as a hash collision would look
    assert cache.get(key) is None


@pytest.mark.filterwarnings("error:alpha cache")  # a failed store is a failure here
def test_two_concurrent_analyses_give_correct_tables_and_whole_entries(checkpoint, alpha_cache,
                                                                        monkeypatch):
    reference = analyze(checkpoint, progress=False, cache=False)
    fit = analyzer.analyze_matrix
    both_started = threading.Barrier(2)

    def slow_start(*args, **kwargs):
        try:
            both_started.wait(timeout=1)  # both analyses fit (and store) the same matrices
        except threading.BrokenBarrierError:
            pass
        return fit(*args, **kwargs)

    monkeypatch.setattr(analyzer, "analyze_matrix", slow_start)
    tables, errors = [None, None], []

    def run(slot: int) -> None:
        try:
            tables[slot] = analyze(checkpoint, progress=False, workers=2)
        except BaseException as err:  # reported below; a thread must not swallow it
            errors.append(err)

    # Each analysis limits BLAS threads process-wide; restore the limits when both are done.
    with threadpool_limits(limits=None):
        threads = [threading.Thread(target=run, args=(slot,)) for slot in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors and all(table is not None for table in tables)
    for table in tables:
        pd.testing.assert_frame_equal(table, reference)
    entries = _entries(alpha_cache)
    assert len(entries) == len(reference)
    assert [p for p in alpha_cache.rglob("*") if p.is_file() and p.suffix != ".json"] == []
    for entry in entries:
        assert json.loads(entry.read_text())["result"]["status"] == "ok"
    assert analyze(checkpoint, progress=False).attrs["alphasel"]["cached"] == len(reference)


_WRITER = """
import sys
from alphasel.cache import ResultCache
cache, writer = ResultCache(sys.argv[1]), int(sys.argv[2])
result = {"alpha": 2.5, "status": "ok", "note": "x" * 20000, "writer": writer}
for _ in range(300):
    cache.put({"name": "shared"}, result)
"""


def test_two_processes_writing_one_entry_never_tear_it(tmp_path):
    # -W error: a store that fails (a rename losing a race) fails the writer.
    writers = [subprocess.Popen([sys.executable, "-W", "error", "-c", _WRITER, str(tmp_path),
                                 str(writer)])
               for writer in (1, 2)]
    cache, seen = ResultCache(tmp_path), set()
    path = cache.path({"name": "shared"})
    while any(process.poll() is None for process in writers):
        if path.exists():
            # A reader finds no entry, or a whole one: never a torn file.
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            seen.add(json.loads(text)["result"]["writer"])
    assert [process.wait() for process in writers] == [0, 0]
    assert seen and seen <= {1, 2}
    assert cache.get({"name": "shared"})["alpha"] == 2.5
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [path.name]


def test_in_memory_modules_are_never_cached(alpha_cache):
    model = tiny_llama(layers=1, **ANALYSIS_LLAMA)
    analyze(model, progress=False)
    table = analyze(model, progress=False)
    assert table.attrs["alphasel"]["cached"] == 0 and list(alpha_cache.iterdir()) == []


def test_an_adapter_shares_the_base_entries_and_keys_its_own_on_its_files(tmp_path,
                                                                          fit_calls):
    base = tiny_llama(layers=2, **ANALYSIS_LLAMA)
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(tiny_llama(layers=2, **ANALYSIS_LLAMA),
                                LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = analyze(tmp_path / "base", progress=False)
    adapted = analyze(tmp_path / "base", adapter=tmp_path / "adapter", progress=False)
    assert adapted["adapted"].sum() == 2
    assert adapted.attrs["alphasel"]["cached"] == len(plain) - 2  # all but the two q_proj
    again = analyze(tmp_path / "base", adapter=tmp_path / "adapter", progress=False)
    assert again.attrs["alphasel"]["cached"] == len(adapted)
    pd.testing.assert_frame_equal(adapted, again)
    config = tmp_path / "adapter" / "adapter_config.json"
    changed = json.loads(config.read_text())
    changed["lora_alpha"] = 8  # another scaling: the adapted matrices change
    config.write_text(json.dumps(changed))
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rescaled = analyze(tmp_path / "base", adapter=tmp_path / "adapter", progress=False)
    assert rescaled.attrs["alphasel"]["cached"] == len(plain) - 2
    q_proj = rescaled["adapted"]
    assert (rescaled.loc[q_proj, "log_norm"] != adapted.loc[q_proj, "log_norm"]).all()


def test_the_cache_lives_in_alphasel_cache_or_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHASEL_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("ALPHASEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "alphasel" / "alpha"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "alphasel" / "alpha"


def test_an_unwritable_cache_warns_once_and_the_analysis_goes_on(checkpoint, tmp_path,
                                                                 monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ALPHASEL_CACHE", str(blocker / "cache"))  # cannot be a directory
    reference = analyze(checkpoint, progress=False, cache=False)
    with pytest.warns(UserWarning, match="cannot be written") as warned:
        table = analyze(checkpoint, progress=False)
    assert len([w for w in warned if "cannot be written" in str(w.message)]) == 1
    pd.testing.assert_frame_equal(table, reference)
