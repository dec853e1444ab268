"""The selection study: spec parsing, one budget for every scheme, run ids from the resolved
config, and a tiny study run, resumed, and failing one run without stopping the others."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import save_causal_lm, tiny_llama, write_code_files

import alphasel
import alphasel.cli
from alphasel.errors import StudyError
from alphasel.study.directory import RunState, open_study, run_folder, run_state
from alphasel.study.launch import create_study, run_study
from alphasel.study.matrix import expand, unit_budget
from alphasel.study.spec import (
    SchemeSpec,
    StudySpec,
    load_spec,
    parse_methods,
    parse_schemes,
    parse_sweep,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_causal_lm(tmp_path_factory.mktemp("tiny-llama"), layers=4)


@pytest.fixture(scope="module")
def code(tmp_path_factory) -> Path:
    return write_code_files(tmp_path_factory.mktemp("code"))


@pytest.fixture(scope="module")
def table():
    return alphasel.analyze(tiny_llama(layers=4), progress=False)


def test_schemes_with_options_parse_and_label():
    specs = parse_schemes("alora:order=low,alora:kinds=q,k,v,band:start=2,random:reselect,full")
    assert [spec.label for spec in specs] == ["alora:order=low", "alora:kinds=q,k,v",
                                              "band:start=2", "random:reselect", "full"]
    assert specs[1].option("kinds") == "q,k,v" and specs[2].option("start") == 2
    assert specs[3].option("reselect") is True
    assert SchemeSpec.parse("random:unit=matrix:reselect").label == "random:unit=matrix:reselect"


@pytest.mark.parametrize("text, message", [
    ("alora,nope", "unknown scheme 'nope'"),
    ("alora:depth=3", "unknown option 'depth'"),
    ("band", "band:start=N"),
    ("first:order=low", "order applies to alora and blora"),
    ("alora:kinds=q,z", "unknown kind 'z'"),
    ("full:reselect", "full fine-tuning takes no options"),
    ("alora,alora", "twice"),
    ("random:reselect=yes", "write the option as reselect"),
])
def test_bad_schemes_say_what_to_write(text, message):
    with pytest.raises(StudyError, match=message):
        parse_schemes(text)


def test_sweeps_parse_on_off_and_numbers_and_refuse_unknown_fields():
    assert parse_sweep(["grad_checkpointing=off,on", "batch_size=2,4"]) == {
        "grad_checkpointing": [False, True], "batch_size": [2, 4]}
    with pytest.raises(StudyError, match="not a training option"):
        parse_sweep(["nope=1,2"])
    with pytest.raises(StudyError, match="use on/off"):
        parse_sweep(["bf16=maybe"])


def test_spec_file_equals_flags_and_bad_training_options_fail_early(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text('model = "m"\ndata = "d"\nschemes = ["alora", "first"]\nk = [1, 2]\n'
                    'seeds = 2\n[train]\nmax_steps = 5\n[sweep]\nbf16 = [false, true]\n')
    spec = load_spec(path)
    assert spec.seeds == [0, 1] and spec.k == [1, 2] and spec.train == {"max_steps": 5}
    assert spec.sweep == {"bf16": [False, True]}
    assert spec.config(1, {"bf16": True}).seed == 1
    with pytest.raises(StudyError, match="--batch-size 0"):
        StudySpec("m", "d", parse_schemes("alora"), train={"batch_size": 0})
    with pytest.raises(StudyError, match="decides these per run"):
        StudySpec("m", "d", parse_schemes("alora"), train={"seed": 3})
    (tmp_path / "bad.toml").write_text("model = \n")
    with pytest.raises(StudyError, match="not valid TOML"):
        load_spec(tmp_path / "bad.toml")


def test_every_matched_scheme_meets_one_budget(table):
    spec = StudySpec("m", "d", parse_schemes("alora,blora,random,first,last,band:start=1,"
                                             "alora:kinds=mlp,all,full"), k=[2], seeds=[0, 1])
    entries = expand(spec, table)
    budget = unit_budget(table, ["q", "k", "v", "o", "gate", "up", "down"], "block", 2, 8)
    # A block of the tiny Llama: q 32², k/v 16×32, o 32², gate/up/down 64×32 → Σ(rows+cols)
    # = 64+48+48+64+96+96+96 = 512; two blocks at rank 8 → 8192.
    assert budget == 8192
    matched = [entry for entry in entries if entry.matched]
    assert {entry.budget for entry in matched} == {8192}
    for entry in matched:
        assert abs(entry.trainable_params - 8192) <= 0.05 * 8192, entry.label
    alora = next(entry for entry in matched if entry.label == "alora")
    assert alora.k == 12  # matrices, chosen by the planner's budget matching
    unmatched = {entry.label: entry for entry in entries if not entry.matched}
    assert unmatched["all"].trainable_params == 2 * 8192 and unmatched["all"].budget is None
    assert unmatched["full"].plan is None and unmatched["full"].config["method"] == "full"
    # Paired design: seed s gives every scheme training seed s; random draws from it too.
    randoms = [entry for entry in entries if entry.label == "random"]
    assert [entry.plan["seed"] for entry in randoms] == [0, 1]
    assert {entry.config["seed"] for entry in entries if entry.seed == 1} == {1}
    # Ids derive from the resolved configuration: the same spec gives the same ids.
    assert [entry.run_id for entry in expand(spec, table)] == [e.run_id for e in entries]
    assert len({entry.run_id for entry in entries}) == len(entries)


def test_each_method_is_matched_to_its_own_budget_in_its_own_currency(table):
    """lora at 2 blocks of rank 8, unfreeze at 7 matrices' worth of rows × cols (one block's,
    as 14 are two of SmolLM2's): every matched plan meets its method's budget within 5%, and
    full trains once for both."""
    spec = StudySpec("m", "d", parse_schemes("alora,blora,random,last,all,full"), k=[2],
                     methods=parse_methods("lora,unfreeze:k=7:unit=matrix:lr=1e-3"),
                     seeds=[0, 1])
    entries = expand(spec, table)
    kinds = ["q", "k", "v", "o", "gate", "up", "down"]
    # The tiny Llama's 28 candidate matrices hold 4 × 9216 parameters: 7 of them, on average,
    # hold one block's 9216.
    unfreeze_budget = unit_budget(table, kinds, "matrix", 7, None, "unfreeze")
    assert unfreeze_budget == 9216
    by_method = {}
    for entry in entries:
        by_method.setdefault(entry.method, []).append(entry)
    assert set(by_method) == {"lora", "unfreeze", "full"}
    assert len(by_method["full"]) == 2  # one per seed, whatever the methods
    for method, budget in (("lora", 8192), ("unfreeze", unfreeze_budget)):
        matched = [entry for entry in by_method[method] if entry.matched]
        assert {entry.budget for entry in matched} == {budget}
        for entry in matched:
            assert abs(entry.trainable_params - budget) <= 0.05 * budget, (method, entry.label)
            assert entry.config["method"] == method and entry.plan["method"] == method
    unfrozen = [entry for entry in by_method["unfreeze"] if entry.plan]
    assert all(module["rank"] is None for entry in unfrozen for module in entry.plan["modules"])
    assert {entry.config["lr"] for entry in unfrozen} == {1e-3}
    assert {entry.rank for entry in by_method["unfreeze"]} == {None}
    assert all("-unfreeze-" in entry.run_id for entry in by_method["unfreeze"])
    assert len({entry.run_id for entry in entries}) == len(entries)


def test_methods_parse_and_older_specs_with_one_method_still_open():
    methods = parse_methods("lora,unfreeze:k=14:unit=matrix")
    assert [m.label for m in methods] == ["lora", "unfreeze:k=14:unit=matrix"]
    spec = StudySpec.from_dict({"model": "m", "data": "d", "schemes": ["alora"],
                                "method": "dora"})
    assert [m.method for m in spec.methods] == ["dora"]
    assert StudySpec.from_dict(spec.to_dict()).methods == spec.methods
    for text, message in (("lora,qlora", "unknown method 'qlora'"),
                          ("unfreeze:k=0", "k must be above 0"),
                          ("unfreeze:unit=layer", "unit must be one of"),
                          ("lora,lora", "twice"),
                          ("unfreeze:depth=2", "unknown option 'depth' in method")):
        with pytest.raises(StudyError, match=message):
            parse_methods(text)
    with pytest.raises(StudyError, match="add unfreeze to --methods"):
        StudySpec("m", "d", parse_schemes("alora"), train={"also": "embed"})


def test_a_budget_no_plan_can_meet_is_refused(table):
    spec = StudySpec("m", "d", parse_schemes("alora:kinds=q"), k=[1], seeds=[0])
    with pytest.raises(StudyError, match="alora:kinds=q.*within 5%"):
        expand(spec, table)
    with pytest.raises(StudyError, match="k=9"):
        expand(StudySpec("m", "d", parse_schemes("first"), k=[9], seeds=[0]), table)


def test_study_runs_resumes_without_repeating_and_survives_a_failed_run(checkpoint, code,
                                                                        tmp_path):
    spec = StudySpec(str(checkpoint), str(code), parse_schemes("blora,random"), k=[1],
                     seeds=[0, 1], train={"max_steps": 2, "max_seq_len": 32, "batch_size": 2})
    study = create_study(spec, tmp_path / "study", progress=False)
    _, entries = open_study(study)
    assert len(entries) == 4
    # Break one run's plan: that run fails, the others finish.
    matrix = json.loads((study / "matrix.json").read_text())
    broken = matrix["runs"][1]
    original = broken["plan"]["modules"][0]["name"]
    broken["plan"]["modules"][0]["name"] = "model.layers.9.mlp.up_proj"
    (study / "matrix.json").write_text(json.dumps(matrix))
    states = run_study(study)
    assert sorted(states.values()) == ["complete", "complete", "complete", "failed"]
    error = json.loads((study / "runs" / broken["run_id"] / "error.json").read_text())
    assert "model.layers.9.mlp.up_proj" in error["error"]
    summaries = {entry.run_id: (study / "runs" / entry.run_id / "summary.json").read_text()
                 for entry in entries if entry.run_id != broken["run_id"]}

    # Repair the plan and resume: only the failed run trains again.
    broken["plan"]["modules"][0]["name"] = original
    (study / "matrix.json").write_text(json.dumps(matrix))
    assert set(run_study(study).values()) == {"complete"}
    for run, text in summaries.items():
        assert (study / "runs" / run / "summary.json").read_text() == text  # not repeated
    assert sorted(p.name for p in (study / "runs").iterdir()) == sorted(
        entry.run_id for entry in entries)  # nothing duplicated
    assert all(run_state(run_folder(study, entry.run_id)) == RunState.COMPLETE
               for entry in entries)
    record = json.loads((study / "runs" / entries[0].run_id / "config.json").read_text())
    assert record["config"]["seed"] == entries[0].seed and record["config"]["max_steps"] == 2


def test_study_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, runs):
    def error(args: list[str], text: str) -> None:
        assert alphasel.cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and text in err, err

    error(["study", "--model", "m", "--data", "d", "--schemes", "alora,nope"], "nope")
    error(["study", "--model", "m", "--data", "d"], "--schemes required")
    error(["study", "--resume", str(tmp_path)], "not an alphasel study")
    error(["study", "--model", "m", "--data", "d", "--schemes", "alora", "--executor", "slurm"],
          "--executor slurm: use one of local, ray")
    error(["study", "--model", "m", "--data", "d", "--schemes", "alora", "--gpus-per-run", "1"],
          "apply to --executor ray")
    spec = tmp_path / "s.toml"
    spec.write_text('model = "m"\ndata = "d"\nschemes = ["alora"]\n')
    error(["study", str(spec), "--k", "2"], "drop --k")
    error(["study", "--resume", str(tmp_path), "--k", "2"], "drop --k")
    assert not (runs / "studies").exists()


def test_selection_stability_compares_estimators_and_draws(table):
    from alphasel.study.stability import jaccard, selection_stability, stability_summary

    assert jaccard({"a", "b"}, {"b", "c"}) == 1 / 3 and jaccard(set(), set()) == 1.0
    spec = StudySpec("m", "d", parse_schemes("alora,blora,first,spectrum"), k=[2], seeds=[0])
    entries = expand(spec, table)
    model = tiny_llama(layers=4)  # the model behind the `table` fixture
    calls = []

    def analyse(**options):
        calls.append(options)
        return alphasel.analyze(model, progress=False, **options)

    stability = selection_stability(entries, analyse, table, "ks", draws=3)
    assert calls == [{"estimator": "median"}, {"estimator": "peak"},
                     *({"estimator": "ks", "downsample": "common", "seed": s} for s in range(3))]
    # first has no signal to be unstable in
    assert set(stability["label"]) == {"alora", "blora", "spectrum"}
    first_rows = stability[stability["label"] == "alora"]
    assert list(first_rows["comparison"]) == ["metric", *["estimator"] * 2,
                                              *["downsampling"] * 3]
    spectrum = stability[stability["label"] == "spectrum"]
    assert list(spectrum["comparison"]) == ["metric"] + ["downsampling"] * 3
    # alpha's choice against snr's, recomputed by hand on the study's own table.
    # The study's ALoRA was matched to the budget at rank 8: each selection is remade so.
    planned = next(entry.plan for entry in entries if entry.label == "alora")

    def alora(source, metric="alpha"):
        return {m.name for m in alphasel.make_plan(source, "alora", budget=planned["budget"],
                                                   rank=8, metric=metric).modules}

    assert alora(table) == {module["name"] for module in planned["modules"]}
    by = {metric: alora(table, metric) for metric in ("alpha", "snr")}
    assert (first_rows.iloc[0]["a"], first_rows.iloc[0]["b"]) == ("metric=alpha", "metric=snr")
    assert first_rows.iloc[0]["jaccard"] == pytest.approx(jaccard(by["alpha"], by["snr"]))
    spectrum_plan = next(entry.plan for entry in entries if entry.label == "spectrum")
    alpha_alike = alphasel.make_plan(table, "alora", len(spectrum_plan["modules"]))
    assert spectrum.iloc[0]["jaccard"] == pytest.approx(jaccard(
        {m["name"] for m in spectrum_plan["modules"]}, set(alpha_alike.module_names)))
    # Recompute one overlap by hand: alora at its budget on the median table vs the ks one.
    expected = jaccard(alora(table), alora(analyse(estimator="median")))
    rows = stability[stability["label"] == "alora"]
    assert rows.iloc[1]["b"] == "estimator=median"
    assert rows.iloc[1]["jaccard"] == pytest.approx(expected)
    assert set(stability["method"]) == {"lora"}
    summary = stability_summary(stability)
    assert list(summary["pairs"]) == [1, 2, 3, 1, 2, 3, 1, 3]
    assert summary["mean_jaccard"].between(0, 1).all()


def test_study_command_writes_table_report_and_stability(checkpoint, code, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["study", "--model", str(checkpoint), "--data", str(code), "--schemes",
            "blora,first", "--k", "1", "--seeds", "1", "--max-steps", "2", "--max-seq-len",
            "32", "--batch-size", "2", "--out", str(out), "--quiet"]
    assert alphasel.cli.main(args) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed and "2 of 2 runs complete" in printed
    table = (out / "table.csv").read_text()
    assert "blora" in table and "first" in table
    stability = (out / "stability.csv").read_text()
    assert "blora" in stability and "first" not in stability
    report = (out / "report.html").read_text()
    assert "Selection stability" in report and "Comparison" in report
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "alpha_shift.html", "cost.html", "final_loss.html", "forest.html", "loss_curves.html",
        "memory.html"]
    # The same command again refuses to overwrite; --resume finds everything complete.
    assert alphasel.cli.main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert alphasel.cli.main(["study", "--resume", str(out), "--quiet"]) == 0
    assert "2 of 2 runs complete" in capsys.readouterr().out


# ---- seeds on demand, killed runs, the command's refusals --------------------------------------


def test_seeds_are_added_to_a_finished_study_and_only_theirs_train(checkpoint, code, tmp_path,
                                                                    capsys):
    out = tmp_path / "study"
    args = ["study", "--model", str(checkpoint), "--data", str(code), "--schemes", "blora,random",
            "--k", "1", "--seeds", "1", "--max-steps", "2", "--max-seq-len", "32",
            "--batch-size", "2", "--out", str(out), "--quiet"]
    assert alphasel.cli.main(args) == 0
    _, first = open_study(out)
    kept = {entry.run_id: (out / "runs" / entry.run_id / "summary.json").read_bytes()
            for entry in first}
    capsys.readouterr()
    assert alphasel.cli.main(["study", "--resume", str(out), "--add-seeds", "1"]) == 0
    printed = capsys.readouterr().out
    assert "2 new run(s) for the added seeds" in printed and "4 of 4 runs complete" in printed
    spec, entries = open_study(out)
    assert spec.seeds == [0, 1] and len(entries) == 4
    assert [entry.run_id for entry in entries[:2]] == list(kept)  # the old runs, as they were
    for run_id, summary in kept.items():
        assert (out / "runs" / run_id / "summary.json").read_bytes() == summary
    assert {entry.seed for entry in entries[2:]} == {1}
    # The study's seed-1 runs are the runs a study made with two seeds from the start has.
    fresh = expand(spec, alphasel.table.read_table(out / "analysis.csv"))
    assert [entry.run_id for entry in fresh] == sorted(
        (entry.run_id for entry in entries), key=[e.run_id for e in fresh].index)
    # A study only grows: fewer seeds are refused in one line, nothing changes.
    matrix = (out / "matrix.json").read_text()
    assert alphasel.cli.main(["study", "--resume", str(out), "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the study has 2 seeds (0, 1); a study only grows" in err
    assert (out / "matrix.json").read_text() == matrix


class _Killer(threading.Thread):
    """Kills the worker process of one run (SIGKILL) ``times`` times, each once its training
    has begun (the run's config.json is written)."""

    def __init__(self, study: Path, run_id: str, times: int) -> None:
        super().__init__(daemon=True)
        self.folder, self.run_id, self.times = run_folder(study, run_id), run_id, times
        self.killed: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while len(self.killed) < self.times and not self.done.is_set():
            for process in psutil.Process().children(recursive=True):
                try:
                    command = process.cmdline()
                except psutil.Error:
                    continue
                if ("alphasel.study.worker" in command and self.run_id in command
                        and process.pid not in self.killed
                        and (self.folder / "config.json").is_file()):
                    process.kill()
                    self.killed.append(process.pid)
            time.sleep(0.05)


def test_a_killed_run_is_retried_from_scratch_then_recorded_as_failed(checkpoint, code, tmp_path,
                                                                      capsys):
    spec = StudySpec(str(checkpoint), str(code), parse_schemes("blora"), k=[1], seeds=[0],
                     train={"max_steps": 400, "max_seq_len": 32, "batch_size": 2})
    study = create_study(spec, tmp_path / "retried", progress=False)
    [entry] = open_study(study)[1]
    killer = _Killer(study, entry.run_id, times=1)
    killer.start()
    assert run_study(study, retries=1) == {entry.run_id: RunState.COMPLETE}
    killer.done.set()
    assert len(killer.killed) == 1
    log = (study / "logs" / f"{entry.run_id}.log").read_text()
    assert "attempt 2 of 2: the last one's process was killed (SIGKILL)" in log
    # Killed on every attempt: failed, with how it died; the command exits 2 naming the run.
    again = create_study(spec, tmp_path / "failed", progress=False)
    killer = _Killer(again, entry.run_id, times=1)
    killer.start()
    assert alphasel.cli.main(["study", "--resume", str(again), "--retries", "0",
                              "--quiet"]) == 2
    killer.done.set()
    error = json.loads((again / "runs" / entry.run_id / "error.json").read_text())
    assert error["error"].startswith("the run's process was killed (SIGKILL) on each of 1 ")
    assert f"1 run(s) failed ({entry.run_id}: the run's process was killed" in \
        capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--retries", "-1"], "--retries -1 must be a whole number ≥ 0"),
    (["--effect", "0"], "--effect 0.0 must be a positive difference"),
    (["--baseline", "last"], "--baseline last: the study has no such scheme (it has blora, "),
    (["--add-seeds", "2"], "--add-seeds grows a study: use it with --resume"),
    (["--plotlyjs", "web"], "--plotlyjs web: use one of inline, directory, cdn"),
    (["--format", "gif"], "--format gif: use one or more of png, svg, pdf"),
    (["--metric", "eval_mcc"], "--metric eval_mcc: the runs of a causal study will not have it; "
                               "they will have eval_loss, best_eval_loss, eval_perplexity, "
                               "eval_token_accuracy: name one of those"),
    (["--eval-harness", "stdlib-mc", "--metric", "harness_arc_easy_acc"],
     "--metric harness_arc_easy_acc: the runs of a causal study will not have it; they will "
     "have eval_loss, best_eval_loss, eval_perplexity, eval_token_accuracy and the harness "
     "scores harness_stdlib-mc_<metric>"),
    (["--task", "classification", "--eval-harness", "stdlib-mc"],
     "--eval-harness evaluates language models"),
])
def test_study_refusals_are_one_line_before_anything_is_written(argv, message, capsys, runs):
    args = ["study", "--model", "m", "--data", "d", "--schemes", "blora,random", *argv]
    assert alphasel.cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (runs / "studies").exists()
