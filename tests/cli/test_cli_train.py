"""`alphasel train` and `alphasel runs` from the command line, on a tiny checkpoint directory:
the inline plan, the record, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import byte_tokenizer, save_causal_lm, tiny_llama

import alphasel.cli
from alphasel.training.record import is_complete

FAST = ["--max-steps", "2", "--max-seq-len", "64", "--batch-size", "2", "--quiet",
        "--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A saved 2-block Llama with its byte-level tokenizer (pad = eos)."""
    return save_causal_lm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def code(tmp_path_factory) -> Path:
    """Twelve small Python files: enough for a split by file."""
    folder = tmp_path_factory.mktemp("code")
    for i in range(12):
        (folder / f"mod_{i}.py").write_text(
            f'def add_{i}(x):\n    """Add {i}."""\n    return x + {i}\n\n\nclass Box{i}:\n'
            f"    value = {i}\n")
    return folder


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = alphasel.cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_inline_plan_trains_and_stores_analysis_and_plan(checkpoint, code, tmp_path, capsys,
                                                         runs):
    status, out, err = run_cli(["train", "--model", str(checkpoint), "--data", str(code),
                                "--scheme", "blora", "--k", "1", *FAST], capsys)
    assert status == 0, err
    [run] = list((runs / "train").iterdir())
    assert is_complete(run)
    assert {"analysis.csv", "plan.json", "config.json"} <= {p.name for p in run.iterdir()}
    plan = json.loads((run / "plan.json").read_text())
    assert plan["scheme"] == "blora" and plan["k"] == 1
    assert f"record: {run}" in out and "2 steps" in out
    config = json.loads((run / "config.json").read_text())
    assert config["command"] == ["alphasel", "train", "--model", str(checkpoint), "--data",
                                 str(code), "--scheme", "blora", "--k", "1", *FAST]
    assert config["model"] == str(checkpoint.resolve())

    status, out, _ = run_cli(["runs"], capsys)
    assert status == 0
    [header, row] = out.strip().splitlines()
    assert header.split()[:4] == ["run_id", "model", "data", "method"]
    assert run.name in row and "blora" in row and "complete" in row


def test_a_plan_file_and_the_resume_flag(checkpoint, code, tmp_path, capsys, runs):
    plan_file = tmp_path / "plan.json"
    assert run_cli(["analyze", str(checkpoint), "--quiet", "--out", str(tmp_path / "a.csv")],
                   capsys)[0] == 0
    assert run_cli(["plan", "--scheme", "last", "--k", "1", "--analysis",
                    str(tmp_path / "a.csv"), "--out", str(plan_file)], capsys)[0] == 0
    out_dir = tmp_path / "run"
    status, _, err = run_cli(["train", "--model", str(checkpoint), "--data", str(code),
                              "--plan", str(plan_file), "--save-every", "1", "--out",
                              str(out_dir), *FAST], capsys)
    assert status == 0, err
    assert json.loads((out_dir / "plan.json").read_text())["scheme"] == "last"
    status, _, err = run_cli(["train", "--resume", str(out_dir)], capsys)
    assert status == 2 and "already complete" in err


def _one_line_error(capsys, args: list[str], needle: str) -> str:
    status, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("alphasel train: error:"), err
    assert needle in lines[0], lines[0]
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(checkpoint, code, tmp_path, capsys, runs):
    base = ["train", "--model", str(checkpoint), *FAST]
    _one_line_error(capsys, [*base, "--data", str(tmp_path / "missing.jsonl"), "--scheme",
                             "blora", "--k", "1"], "missing.jsonl")
    _one_line_error(capsys, [*base, "--data", "stdlib-nope", "--scheme", "blora", "--k", "1"],
                    "stdlib-code")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    _one_line_error(capsys, [*base, "--data", str(bad), "--scheme", "blora", "--k", "1"],
                    "line 2")
    _one_line_error(capsys, [*base, "--data", str(code), "--method", "full", "--scheme",
                             "blora", "--k", "1"], "--method full")
    _one_line_error(capsys, [*base, "--data", str(code), "--scheme", "blora", "--k", "9"],
                    "k=9")
    _one_line_error(capsys, [*base, "--data", str(code), "--scheme", "blora", "--k", "1",
                             "--batch-size", "0", "--lora-init", "nope"], "--lora-init")
    _one_line_error(capsys, [*base, "--data", str(code), "--k", "1"], "add --scheme")
    _one_line_error(capsys, [*base, "--data", str(code), "--method", "full", "--reselect"],
                    "--reselect re-chooses")
    _one_line_error(capsys, ["train", "--data", str(code)], "--model is required")
    csv = tmp_path / "one-label.csv"
    csv.write_text("text,label\nhello there,a\ngeneral kenobi,a\nyou are bold,a\n")
    _one_line_error(capsys, [*base, "--data", str(csv), "--task", "classification",
                             "--method", "full"], "needs at least 2 classes")
    other = tmp_path / "other-plan.json"
    four = tmp_path / "four"
    tiny_llama(layers=4).save_pretrained(four)
    byte_tokenizer().save_pretrained(four)
    assert run_cli(["analyze", str(four), "--quiet", "--out", str(tmp_path / "f.csv")],
                   capsys)[0] == 0
    assert run_cli(["plan", "--scheme", "last", "--k", "1", "--analysis",
                    str(tmp_path / "f.csv"), "--out", str(other)], capsys)[0] == 0
    _one_line_error(capsys, [*base, "--data", str(code), "--plan", str(other)],
                    "model.layers.3")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")  # e.g. a model checkpoint
    _one_line_error(capsys, [*base, "--data", str(code), "--method", "full", "--out",
                             str(foreign)], "holds no alphasel run")
    assert (foreign / "config.json").read_text() == "{}"
    _one_line_error(capsys, ["train", "--resume", str(foreign), "--max-steps", "3"],
                    "drop --max-steps")
    _one_line_error(capsys, [*base, "--data", str(code), "--plan", str(other), "--estimator",
                             "median"], "--estimator shape an inline plan")
    # Every command above was refused: none left a run directory, complete or not.
    assert not (runs / "train").exists() or not any((runs / "train").iterdir())

    out_dir = tmp_path / "taken"
    assert run_cli([*base, "--data", str(code), "--method", "full", "--out", str(out_dir),
                    "--no-generate"], capsys)[0] == 0
    before = (out_dir / "summary.json").read_text()
    _one_line_error(capsys, [*base, "--data", str(code), "--method", "full", "--out",
                             str(out_dir)], "--overwrite")
    assert (out_dir / "summary.json").read_text() == before


def test_resume_from_the_command_line(checkpoint, code, tmp_path, capsys, runs):
    """A run killed after step 3 of 4 resumes with `alphasel train --resume DIR`; a checkpoint
    cut short by the kill (no trainer_state.json) is passed over for the last whole one."""
    from transformers import TrainerCallback

    from alphasel.plan import InjectionPlan
    from alphasel.training import TrainConfig, train

    class Crash(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == 3 and "loss" in (logs or {}):
                raise KeyboardInterrupt

    assert run_cli(["analyze", str(checkpoint), "--quiet", "--out", str(tmp_path / "a.csv")],
                   capsys)[0] == 0
    assert run_cli(["plan", "--scheme", "first", "--k", "1", "--analysis",
                    str(tmp_path / "a.csv"), "--out", str(tmp_path / "p.json")], capsys)[0] == 0
    out = tmp_path / "cut"
    config = TrainConfig(max_steps=4, save_every=2, max_seq_len=64, batch_size=2,
                         max_new_tokens=4)
    with pytest.raises(KeyboardInterrupt):
        train(str(checkpoint), InjectionPlan.load(tmp_path / "p.json"), str(code), config,
              out=out, progress=False, callbacks=[Crash()])
    (out / "checkpoints" / "checkpoint-3").mkdir()  # a save the kill cut short
    status, stdout, err = run_cli(["train", "--resume", str(out), "--quiet"], capsys)
    assert status == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from_step"] == 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == [1, 2, 3, 4]
    generations = [json.loads(line)["when"] for line in
                   (out / "generations.jsonl").read_text().splitlines()]
    assert generations.count("before") == generations.count("after") > 0


@pytest.mark.integration
def test_torchrun_two_processes_write_one_record(checkpoint, code, tmp_path):
    """`torchrun --nproc_per_node 2 -m alphasel train` on this CPU (gloo): one complete record
    from both processes, tokens counted over both."""
    out = tmp_path / "ddp"
    env = {**os.environ, "ALPHASEL_RUNS": str(tmp_path / "runs")}
    held_out = ["--eval-fraction", "0.5"]  # eval batches on both processes, one padded
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
         "alphasel", "train", "--model", str(checkpoint), "--data", str(code), "--scheme",
         "blora", "--k", "1", "--out", str(out), *FAST, *held_out],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["world_size"] == 2
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [row["step"] for row in metrics if "loss" in row]
    assert train_steps == [1, 2]  # written once, by the main process
    # Batches of 2 per process: each step sees 4 chunks, and one process alone would see 2.
    last_train = [row for row in metrics if "loss" in row][-1]
    assert last_train["tokens"] > 2 * 2 * 32
    assert result.stdout.count("record:") == 1
    # The evaluation's per-example counts are gathered from both processes: the record holds
    # every eval example once, in order, as one process evaluating alone counts them.
    alone = tmp_path / "alone"
    subprocess.run([sys.executable, "-m", "alphasel", "train", "--model", str(checkpoint),
                    "--data", str(code), "--scheme", "blora", "--k", "1", "--out", str(alone),
                    *FAST, *held_out], check=True, capture_output=True, env=env, timeout=600)

    def predictions(run: Path) -> list[dict]:
        return [json.loads(line) for line in
                (run / "eval_predictions.jsonl").read_text().splitlines()]

    both, single = predictions(out), predictions(alone)
    assert len(single) > 2 and [row["id"] for row in both] == list(range(len(single)))
    assert [row["tokens"] for row in both] == [row["tokens"] for row in single]
    alone_summary = json.loads((alone / "summary.json").read_text())
    assert summary["eval_token_accuracy"] == pytest.approx(alone_summary["eval_token_accuracy"],
                                                           abs=0.02)


@pytest.mark.integration
def test_torchrun_reselection_adapts_the_same_modules_on_every_rank(checkpoint, code,
                                                                     tmp_path):
    """`torchrun ... train --reselect-every 1`: each round is planned once, given to both
    processes (checked by gathering their module lists) and trained under a new DDP wrapper."""
    out = tmp_path / "ddp-reselect"
    env = {**os.environ, "ALPHASEL_RUNS": str(tmp_path / "runs")}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
         "alphasel", "train", "--model", str(checkpoint), "--data", str(code), "--scheme",
         "random", "--k", "3", "--reselect-every", "1", "--out", str(out), *FAST,
         "--max-steps", "3"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["world_size"] == 2
    assert summary["rounds"] == 3 and summary["global_step"] == 3
    rounds = [json.loads(line) for line in (out / "selections.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rounds] == [0, 1, 2]
    assert len({tuple(row["modules"]) for row in rounds}) > 1  # random draws anew each round
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in metrics if "loss" in row] == [1, 2, 3]
