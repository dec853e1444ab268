"""What `alphasel train` shows on the console: one training bar, evaluation results as they come,
the summary; the libraries' own output only with --verbose; bitsandbytes not imported unless a
4-bit base needs it."""

from __future__ import annotations

import subprocess
import sys

from helpers import FAST, alpha_table, code_data, save_causal_lm, tiny_llama, write_code_files

from alphasel.planner import make_plan
from alphasel.training import TrainConfig, train

#: What transformers, TRL, PEFT and bitsandbytes print that a user should not see by default.
LIBRARY_NOISE = ("kernels-community", "{'loss'", "{'eval_loss'", "FutureWarning",
                 "UserWarning", "Loading weights", "Truncating train dataset",
                 "Building labels")

PROBE = """
import sys
from alphasel.cli import main
sys.argv = ["alphasel", *sys.argv[1:]]
code = main()
print("bitsandbytes imported:", sys.modules.get("bitsandbytes") is not None)
sys.exit(code)
"""


def test_cli_train_shows_a_bar_evaluations_and_the_summary_only(tmp_path):
    checkpoint = save_causal_lm(tmp_path / "ckpt")
    code = write_code_files(tmp_path / "code")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "train", "--model", str(checkpoint), "--data", str(code),
         "--scheme", "blora", "--k", "1", "--max-steps", "2", "--max-seq-len", "64",
         "--batch-size", "2", "--max-new-tokens", "4", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bitsandbytes imported: False" in result.stdout
    assert "step 0: eval loss" in result.stdout and "step 2: eval loss" in result.stdout
    assert "record: " in result.stdout and "2 steps" in result.stdout
    assert "training:" in result.stderr and "loss=" in result.stderr  # the one bar
    for noise in LIBRARY_NOISE:
        assert noise not in result.stdout + result.stderr, noise


def test_alphasel_passes_no_deprecated_argument(tmp_path, recwarn, tokenizer):
    """Even with the libraries' own output shown (verbose), no deprecation warning concerns
    an argument alphasel passes (gradient checkpointing: activation_checkpointing now)."""
    plan = make_plan(alpha_table(tiny_llama()), "blora", 1)
    train(tiny_llama(), plan, code_data(tokenizer),
          TrainConfig(max_steps=1, grad_checkpointing=True, **FAST), tokenizer=tokenizer,
          out=tmp_path / "run", progress=False, verbose=True)
    messages = [str(warning.message) for warning in recwarn]
    assert not [text for text in messages if "`gradient_checkpointing" in text], messages


def test_without_a_bar_evaluations_still_print_and_no_raw_logs(tmp_path, capsys, tokenizer):
    plan = make_plan(alpha_table(tiny_llama()), "blora", 1)
    train(tiny_llama(), plan, code_data(tokenizer), TrainConfig(max_steps=2, **FAST),
          tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    out, err = capsys.readouterr()
    assert "step 0: eval loss" in out and "step 2: eval loss" in out
    assert "{'" not in out and "training:" not in err
