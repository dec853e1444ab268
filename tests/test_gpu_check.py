"""``python -m analysis.gpu_check --dry-run``: every part of the GPU check that can run on a CPU
runs, small, and the report says what each measured. (On a GPU machine it runs without
--dry-run; nothing here needs one.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "ALPHASEL_RUNS": str(out / "runs")}
    done = subprocess.run([sys.executable, "-m", "analysis.gpu_check", "--dry-run", "--out",
                           str(out)], cwd=REPOSITORY, env=env, capture_output=True, text=True,
                          timeout=900)
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


def test_the_measurements_are_the_ones_the_check_promises(report):
    parts = report[0]["parts"]
    assert parts["analyzer_block"]["max_alpha_difference"] <= 1e-6
    assert parts["analyzer_block"]["matrices"] == 7
    fold = parts["fold"]
    assert fold["base_dtype"] == "bfloat16" and fold["max_fold_error"] < 1e-3
    assert fold["bf16_rounding_would_lose"] > 0.1  # what the fold into bf16 used to lose
    run = parts["reselect_bf16"]
    assert run["rounds"] == 2 and run["alpha_seconds"] > 0 and run["peak_memory_mb"] > 0
    assert run["precision"] == {"stored": "bfloat16", "base": "bfloat16",
                                "trainable": "float32", "autocast": "bf16"}
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
