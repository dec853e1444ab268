"""Study statistics: t-intervals, seed-paired differences, failed and missing runs, the
comparison table and `alphasel compare`, on run records written by hand (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from statsmodels.stats.power import TTestPower

from alphasel.cli import main
from alphasel.errors import StudyError
from alphasel.plan import InjectionPlan, PlannedModule
from alphasel.study.collect import collect_runs, collect_study
from alphasel.study.significance import (
    detectable_difference,
    holm,
    paired_tests,
    power,
    seeds_needed,
)
from alphasel.study.stats import (
    comparison_table,
    paired_differences,
    summarize,
    t_interval,
    verdicts,
)
from alphasel.training.record import RunWriter

#: t quantile 0.975 with 2 degrees of freedom, from a printed table.
T_975_2 = 4.302652729911275


def make_plan(scheme: str, blocks: tuple[int, ...], rank: int = 8) -> InjectionPlan:
    modules = [PlannedModule(name=f"model.layers.{block}.self_attn.{kind}_proj", block=block,
                             kind=kind, rows=32, cols=32, rank=rank, lora_alpha=rank, alpha=3.0,
                             selection_alpha=None)
               for block in blocks for kind in ("q", "v")]
    return InjectionPlan(modules=modules, scheme=scheme, k=len(blocks), unit="block",
                         kinds=["q", "v"])


def write_run(path: Path, scheme: str = "alora", seed: int = 0, eval_loss: float = 1.0,
              model_id: str = "toy/llama", blocks: tuple[int, ...] = (0, 1),
              complete: bool = True, **options) -> Path:
    """A run record as `alphasel train` leaves it; scheme "full" trains without a plan."""
    full = scheme == "full"
    plan = None if full else make_plan(scheme, blocks)
    writer = RunWriter.create(path)
    writer.write_config({
        "model_id": model_id, "data": "toy", "method": "full" if full else "lora",
        "scheme": None if full else scheme, "k": None if full else plan.k,
        "config": {"seed": seed, "lr": 2e-5 if full else 2e-4, "max_steps": 10,
                   "reselect": False, "reselect_every": None, "report_to": ["none"],
                   **options}})
    if plan is not None:
        writer.write_plan(plan)
    if complete:
        writer.write_summary({"eval_loss": eval_loss, "best_eval_loss": eval_loss - 0.1,
                              "wall_s": 10.0, "tokens_per_s": 100.0, "peak_memory_mb": 500.0,
                              "trainable_params": plan.trainable_params if plan else 9000,
                              "total_params": 9000})
    return path


def write_study(root: Path, entries: list[dict]) -> Path:
    """A study directory: matrix.json listing ``entries`` (run_id, label, seed, ... filled in)
    and a run record for each entry with an ``eval_loss`` (``error`` writes error.json)."""
    root.mkdir(parents=True, exist_ok=True)
    runs = []
    for index, entry in enumerate(entries):
        scheme = entry["label"].split(":")[0]
        unmatched = scheme in ("all", "full")
        listed = {"run_id": f"run-{index}", "scheme": scheme,
                  "k": None if scheme == "full" else entry.get("k", 2),
                  "rank": None if scheme == "full" else 8, "sweep": {}, "matched": not unmatched,
                  "budget": None if unmatched else entry.get("budget", 1024),
                  **{key: value for key, value in entry.items()
                     if key not in ("eval_loss", "error", "model_id", "state")}}
        runs.append(listed)
        run_dir = root / "runs" / listed["run_id"]
        if entry.get("state") == "incomplete":
            write_run(run_dir, scheme, listed["seed"], complete=False)
        elif "error" in entry:
            run_dir.mkdir(parents=True)
            (run_dir / "error.json").write_text(json.dumps(
                {"error": entry["error"], "type": "RuntimeError"}))
        elif "eval_loss" in entry:
            write_run(run_dir, scheme, listed["seed"], entry["eval_loss"],
                      entry.get("model_id", "toy/llama"))
    (root / "spec.json").write_text(json.dumps({"record": "alphasel-study", "model": "toy",
                                                "data": "toy"}))
    (root / "matrix.json").write_text(json.dumps({"runs": runs}))
    return root


def paired_study(root: Path) -> Path:
    """random and alora on seeds 0-2 (alora also on seed 3), listed out of seed order: the
    seeds differ a lot, alora beats random at every seed by a little."""
    random_loss = {0: 1.0, 1: 2.0, 2: 3.0}
    alora_loss = {2: 2.95, 0: 0.9, 3: 1.5, 1: 1.9}
    return write_study(root, [
        *({"label": "random", "seed": seed, "eval_loss": loss}
          for seed, loss in random_loss.items()),
        *({"label": "alora", "seed": seed, "eval_loss": loss, "k": 4}
          for seed, loss in alora_loss.items()),
        *({"label": "all", "seed": seed, "eval_loss": 0.5 + seed, "k": 12}
          for seed in range(3)),
        *({"label": "full", "seed": seed, "eval_loss": 0.4 + seed} for seed in range(3)),
    ])


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("alphasel compare: error: ")
    return lines[0]


def test_t_interval_matches_hand_computation():
    mean, std, low, high = t_interval([1.0, 2.0, 3.0])
    half = T_975_2 * 1.0 / math.sqrt(3)
    assert (mean, std) == pytest.approx((2.0, 1.0))
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-9)
    assert t_interval([1.0, 2.0, math.nan, 3.0]) == pytest.approx((mean, std, low, high))
    one = t_interval([5.0])
    assert one[0] == 5.0 and all(math.isnan(value) for value in one[1:])
    assert all(math.isnan(value) for value in t_interval([]))


def test_paired_differences_pair_runs_by_seed(tmp_path):
    runs = collect_study(paired_study(tmp_path / "study"))
    differences = paired_differences(runs, "random")
    alora = differences[differences["label"] == "alora"].iloc[0]
    # Seed 3 has no random partner; the others differ by -0.1, -0.1, -0.05.
    assert alora["n_pairs"] == 3
    expected = t_interval([-0.1, -0.1, -0.05])
    assert (alora["mean"], alora["ci_low"], alora["ci_high"]) == pytest.approx(
        (expected[0], expected[2], expected[3]))
    assert alora["ci_high"] < 0  # paired: alora is better at every seed
    # Side by side, the two groups' intervals overlap widely: only pairing shows the gain.
    table = summarize(runs).set_index("label")
    assert table.loc["alora", "eval_loss_ci_low"] < table.loc["random", "eval_loss_mean"]
    assert table.loc["alora", "n"] == 4
    # The baselines are compared with random only where they share the cell: all and full
    # have no budget, so they are not paired with random at budget 1024.
    assert set(differences["label"]) == {"alora"}
    assert paired_differences(runs, "band").empty


def test_unmatched_baselines_pair_with_every_budget(tmp_path):
    study = write_study(tmp_path / "study", [
        *({"label": "alora", "seed": seed, "eval_loss": 1.0 + seed, "budget": budget}
          for seed in range(2) for budget in (1024, 2048)),
        *({"label": "all", "seed": seed, "eval_loss": 0.8 + 0.9 * seed, "k": 12}
          for seed in range(2)),
        *({"label": "full", "seed": seed, "eval_loss": 0.5 + seed} for seed in range(2)),
    ])
    runs = collect_study(study)
    versus_all = paired_differences(runs, "all")
    assert sorted(versus_all.loc[versus_all["label"] == "alora", "budget"]) == [1024, 2048]
    assert versus_all["mean"].tolist() == pytest.approx([0.25, 0.25])  # 0.2 and 0.3
    # full has no rank: "all" at rank 8 is not its reference; but full is every label's.
    assert "full" not in set(versus_all["label"])
    versus_full = paired_differences(runs, "full")
    assert set(versus_full["label"]) == {"alora", "all"}
    table = comparison_table(runs)
    assert table["label"].tolist() == ["alora", "alora", "all", "full"]
    mean, _, low, high = t_interval([0.2, 0.3])
    assert table["vs_all"].tolist() == [f"{mean:.3f} [{low:.3f}, {high:.3f}]"] * 2 + ["", ""]
    assert table["vs_all_pairs"].tolist()[:2] == [2, 2]
    assert table["vs_random"].eq("").all()  # no random in this study: nothing to pair
    assert table["matched"].tolist() == [True, True, False, False]
    assert table["budget_gap"].isna().tolist() == [False, False, True, True]


def test_failed_and_missing_runs_are_counted_not_averaged(tmp_path):
    study = write_study(tmp_path / "study", [
        {"label": "alora", "seed": 0, "eval_loss": 1.0},
        {"label": "alora", "seed": 1, "eval_loss": 2.0},
        {"label": "alora", "seed": 2, "error": "CUDA out of memory"},
        {"label": "alora", "seed": 3},  # never started
        {"label": "alora", "seed": 4, "state": "incomplete"},  # killed mid-run
    ])
    runs = collect_study(study)
    assert runs["status"].tolist() == ["complete", "complete", "failed", "missing",
                                       "incomplete"]
    assert runs.loc[2, "error"] == "RuntimeError: CUDA out of memory"
    assert runs["model_id"].eq("toy/llama").all()  # filled in: one group, not two
    assert math.isnan(runs.loc[2, "eval_loss"]) and math.isnan(runs.loc[4, "eval_loss"])
    table = summarize(runs)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["n"], row["failed"], row["missing"]) == (2, 1, 2)
    assert row["eval_loss_mean"] == pytest.approx(1.5)
    assert row["best_eval_loss_mean"] == pytest.approx(1.4)
    assert row["budget_gap"] == pytest.approx(2 * 2 * 8 * 64 / 1024 - 1)  # 4 rank-8 32×32
    assert "eval_accuracy_mean" not in table  # a causal LM has no accuracy


def test_record_columns_and_alpha_shift(tmp_path):
    run = write_run(tmp_path / "run", "blora", blocks=(1, 3))
    history = pd.DataFrame([
        {"epoch": epoch, "step": 5 * epoch, "name": name, "block": 1, "kind": "q",
         "alpha": 3.0 + shift * epoch / 2, "xmin": 1.0, "D": 0.1, "num_pl_spikes": 5,
         "adapted": adapted}
        for epoch in (0, 1, 2)
        for name, shift, adapted in (("a", 0.5, True), ("b", 1.5, True), ("c", 10.0, False))])
    history.to_csv(run / "alpha_history.csv", index=False)
    row = collect_runs([run]).iloc[0]
    assert row["alpha_shift"] == pytest.approx(1.0)  # the unadapted module is left out
    assert (row["adapted_modules"], row["adapted_blocks"]) == (4, 2)
    assert (row["label"], row["k"], row["rank"], row["seed"]) == ("blora", 2, 8, 0)
    assert row["trainable_params"] == 4 * 8 * 64
    assert math.isnan(collect_runs([write_run(tmp_path / "other")]).iloc[0]["alpha_shift"])


def test_loose_runs_labels_and_sweep(tmp_path):
    paths = [write_run(tmp_path / "a", "random", seed=0, lr=1e-4),
             write_run(tmp_path / "b", "random", seed=0, lr=1e-3),
             write_run(tmp_path / "c", "random", seed=0, lr=1e-4, reselect=True),
             write_run(tmp_path / "d", "full", seed=0)]
    runs = collect_runs(paths)
    assert runs["label"].tolist() == ["random", "random", "random:reselect", "full"]
    assert runs["matched"].tolist() == [True, True, True, False]
    assert runs["sweep.lr"].tolist()[:3] == [1e-4, 1e-3, 1e-4]
    assert pd.isna(runs["sweep.lr"].iloc[3])  # full fine-tuning keeps its own lr
    assert "sweep.report_to" not in runs and "sweep.reselect" not in runs
    assert runs["budget"].isna().all()
    # Two learning rates are two groups, never one mean.
    assert len(summarize(runs)) == 4


def test_compare_study_prints_and_writes_table_csv(tmp_path, capsys):
    study = paired_study(tmp_path / "study")
    assert main(["compare", str(study)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    out = captured.out
    assert "all (unmatched)" in out and "full (unmatched)" in out
    assert out.strip().endswith(f"wrote {study / 'table.csv'}")
    alora_line = next(line for line in out.splitlines() if line.lstrip().startswith("alora"))
    expected = t_interval([-0.1, -0.1, -0.05])
    assert f"{expected[0]:.3f} [{expected[2]:.3f}, {expected[3]:.3f}]" in alora_line
    table = pd.read_csv(study / "table.csv")
    assert table["label"].tolist() == ["random", "alora", "all", "full"]
    for column in ("n", "failed", "missing", "eval_loss_mean", "eval_loss_ci_low",
                   "eval_loss_ci_high", "best_eval_loss_mean", "trainable_params",
                   "budget_gap", "alpha_shift", "vs_random", "vs_all", "vs_all_mean"):
        assert column in table
    assert table.set_index("label").loc["alora", "vs_all_pairs"] == 3
    assert sorted(path.name for path in study.iterdir()) == ["matrix.json", "runs",
                                                              "spec.json", "table.csv"]


def test_compare_runs_of_two_models_groups_by_model_with_a_warning(tmp_path, capsys):
    paths = [write_run(tmp_path / f"{model}-{seed}", "alora", seed, 1.0 + seed,
                       model_id=f"toy/{model}")
             for model in ("llama", "gpt2") for seed in range(2)]
    out = tmp_path / "compare.csv"
    assert main(["compare", *map(str, paths), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    warning = captured.err.strip().splitlines()
    assert len(warning) == 1 and "2 models" in warning[0] and "toy/gpt2" in warning[0]
    table = pd.read_csv(out)
    assert table["model_id"].tolist() == ["toy/llama", "toy/gpt2"]
    assert table["n"].tolist() == [2, 2]
    assert "toy/gpt2" in captured.out


def test_compare_refuses_bad_input_with_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "absent")]) == 2
    assert "does not exist" in error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "neither a study" in error_line(capsys)
    study = paired_study(tmp_path / "study")
    run = write_run(tmp_path / "run")
    assert main(["compare", str(study), str(run)]) == 2
    assert "compare it on its own" in error_line(capsys)
    assert main(["compare", str(study), "--out", str(tmp_path / "table.txt")]) == 2
    assert "extension" in error_line(capsys)
    assert not (study / "table.csv").exists()
    (study / "matrix.json").write_text('{"runs": []}')
    assert main(["compare", str(study)]) == 2
    assert "lists no runs" in error_line(capsys)
    with pytest.raises(StudyError, match="holds no matrix.json"):
        collect_study(run)


def test_costs_get_their_spread_and_interval_too():
    rows = [{"label": "blora", "seed": seed, "status": "complete", "matched": True,
             "wall_s": wall, "tokens_per_s": 100.0 + seed, "peak_memory_mb": 500.0}
            for seed, wall in enumerate([10.0, 12.0, 17.0])]
    table = summarize(pd.DataFrame(rows), by=["label"])
    mean, std, low, high = t_interval([10.0, 12.0, 17.0])
    row = table.iloc[0]
    assert row["wall_s"] == pytest.approx(mean) and row["wall_s_std"] == pytest.approx(std)
    assert (row["wall_s_ci_low"], row["wall_s_ci_high"]) == (pytest.approx(low),
                                                             pytest.approx(high))
    assert row["peak_memory_mb_std"] == 0.0 and row["tokens_per_s_ci_high"] > 101.0


# ---- tests, power and verdicts, against cases computed by hand ---------------------------------


def test_paired_tests_match_hand_computed_p_values():
    # d = 1, 2, 3: mean 2, sd 1, t = 2 / (1 / √3) = √12 with 2 degrees of freedom, whose
    # two-sided p-value is 1 − t / √(2 + t²) (Student's t with 2 df in closed form).
    t = math.sqrt(12)
    result = paired_tests([1.0, 2.0, 3.0])
    assert result["p_t"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-12)
    assert result["effect_size"] == pytest.approx(2.0)
    # Wilcoxon, exact: all five differences of one sign, no ties → p = 2 / 2⁵.
    assert paired_tests([0.1, 0.2, 0.3, 0.4, 0.5])["p_wilcoxon"] == pytest.approx(2 / 32)
    assert paired_tests([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6])["p_wilcoxon"] == pytest.approx(
        2 / 64)
    assert paired_tests([0.0, 0.0, 0.0]) == {"p_t": 1.0, "p_wilcoxon": 1.0, "effect_size": 0.0}
    assert all(math.isnan(value) for value in paired_tests([0.5]).values())


def test_holm_by_hand():
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 → 0.03, 0.06, 0.04, made monotone → 0.06.
    assert holm([0.01, 0.04, math.nan, 0.03]) == pytest.approx([0.03, 0.06, math.nan, 0.06],
                                                               nan_ok=True)


def test_detectable_difference_and_seeds_needed():
    # statsmodels' own solver where it converges: 5 seeds find 1.682 sd at 5%.
    assert detectable_difference(5, 0.01) == pytest.approx(
        0.01 * TTestPower().solve_power(nobs=5, alpha=0.05, power=0.8), rel=1e-5)
    # Many seeds: the normal approximation (z₀.₉₇₅ + z₀.₈) / √n, within 1%.
    assert detectable_difference(400, 1.0) == pytest.approx((1.959964 + 0.841621) / 20,
                                                           rel=0.01)
    # More comparisons, a stricter level: a larger detectable difference; two seeds at a
    # Bonferroni level of 0.05 / 12 still find 138 sd (the closed form returns NaN there).
    assert detectable_difference(5, 0.01, 12) > detectable_difference(5, 0.01)
    assert 100 < detectable_difference(2, 1.0, 12) < 200
    assert power(138.5, 2, 0.05 / 12) == pytest.approx(0.8, abs=0.01)
    assert math.isnan(detectable_difference(1, 0.01))
    # Half a standard deviation takes 34 seeds (33.4 rounded up).
    assert seeds_needed(0.5, 1.0) == 34 and seeds_needed(5.0, 1.0) == 3
    assert math.isnan(seeds_needed(0.5, 0.0))


def test_the_table_adjusts_every_comparison_together_and_says_the_verdicts(tmp_path):
    """alora beats random by 0.1 at each of 6 seeds (± 0.01); blora equals random; all is
    better than everything by 0.5. Holm's family is every comparison the table makes."""
    noise = [0.01, -0.01, 0.005, -0.005, 0.0, 0.002]
    entries = []
    for seed, wiggle in enumerate(noise):
        base = 3.0 + seed  # each seed its own level: only the paired tests see through it
        entries += [{"label": "random", "seed": seed, "eval_loss": base},
                    {"label": "alora", "seed": seed, "eval_loss": base - 0.1 + wiggle},
                    {"label": "blora", "seed": seed, "eval_loss": base + wiggle},
                    {"label": "all", "seed": seed, "eval_loss": base - 0.5}]
    runs = collect_study(write_study(tmp_path / "study", entries))
    table = comparison_table(runs, baselines=("blora",), effect=0.05)
    assert table.attrs["baselines"] == ["random", "all", "blora"]
    family = table.attrs["comparisons"]
    raw = [p for baseline in ("random", "all", "blora")
           for p in table[f"vs_{baseline}_p"].dropna()]
    # vs random: alora, blora; vs all: alora, blora (random − all is 0.5 at every seed: no
    # spread, no t-test); vs blora: alora (random − blora is blora − random again). The
    # unmatched all has no budget, so it pairs as a baseline only.
    assert family == len(raw) == 2 + 2 + 1
    expected = dict(zip(raw, holm(raw), strict=True))
    for baseline in ("random", "all", "blora"):
        for p, adjusted in zip(table[f"vs_{baseline}_p"], table[f"vs_{baseline}_p_holm"],
                               strict=True):
            if not math.isnan(p):
                assert adjusted == pytest.approx(expected[p])
    alora = table.set_index("label").loc["alora"]
    assert alora["vs_random_mean"] == pytest.approx(-0.1 + sum(noise) / 6)
    assert alora["vs_random_effect_size"] < -10 and alora["vs_random_p_holm"] < 0.05
    # 0.05 at the Bonferroni level 0.05 / 7: the first n whose power reaches 0.8.
    needed, size = alora["vs_random_seeds_needed"], 0.05 / alora["vs_random_std"]
    assert power(size, int(needed) - 1, 0.05 / 7) < 0.8 <= power(size, int(needed), 0.05 / 7)
    assert needed == 4
    lines = verdicts(table)
    assert any(line.startswith("alora vs random: better, eval_loss -0.100 [") for line in lines)
    assert any(line.startswith("alora vs all: worse") for line in lines)
    blora = next(line for line in lines if line.startswith("blora vs random"))
    detectable = table.set_index("label").loc["blora", "vs_random_detectable"]
    assert "no difference detected" in blora and f"could detect ≥ {detectable:.3g}" in blora
    assert "seeds would detect 0.05" in blora
    assert not any(line.startswith("random vs blora") for line in lines)  # asked once
    constant = next(line for line in lines if line.startswith("random vs all"))
    assert "not tested (the difference is the same at every seed" in constant
    assert "Wilcoxon's Holm p" in constant
    with pytest.raises(StudyError, match=r"--baseline lora: the runs have no such label \(they "
                                         r"have random, alora, blora, all\)"):
        comparison_table(runs, baselines=("lora",))
    with pytest.raises(StudyError, match="--effect -1 must be a positive difference"):
        comparison_table(runs, effect=-1)


def test_runs_of_different_eval_sets_are_flagged(tmp_path):
    """A study grown across alphasel versions (or data options) can hold runs evaluated on
    other examples: the verdicts say so first."""
    runs = collect_study(write_study(tmp_path / "study", [
        {"label": label, "seed": seed, "eval_loss": 1.0 + seed + (0.1 if label == "alora" else 0)}
        for label in ("random", "alora") for seed in range(3)]))
    assert comparison_table(runs).attrs["eval_sets"] == 1  # no fingerprints recorded
    runs["evaluated_on"] = ["a", "a", "b", "a", "a", "b"]
    table = comparison_table(runs)
    assert table.attrs["eval_sets"] == 2
    assert verdicts(table)[0].startswith("warning: the runs were evaluated on 2 different eval")


def test_a_metric_the_runs_lack_is_refused_naming_those_they_have(tmp_path, capsys):
    """A classification metric asked of language-model runs: one line, exit 2."""
    study = write_study(tmp_path / "study", [
        {"label": label, "seed": seed, "eval_loss": 1.0 + seed}
        for label in ("random", "alora") for seed in range(2)])
    with pytest.raises(StudyError, match=r"--metric eval_mcc: the runs have no value of it "
                                         r"\(they have eval_loss, best_eval_loss\)"):
        comparison_table(collect_study(study), "eval_mcc")
    assert main(["compare", str(study), "--metric", "eval_mcc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose one of those" in err
    assert not (study / "table.csv").exists()
    table = comparison_table(collect_study(study), "best_eval_loss")
    assert table.attrs["metric"] == "best_eval_loss"
