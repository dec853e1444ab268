"""Study figures, the report page and `alphasel plot compare`, on a study written by hand (no
training): every figure's data is checked against means and intervals computed here."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from alphasel.cli import main
from alphasel.errors import PlotError, StudyError
from alphasel.plan import InjectionPlan, PlannedModule
from alphasel.plots import comparison as figures
from alphasel.plots.comparison import (
    alpha_shift_figure,
    cost_figure,
    final_loss_figure,
    loss_curves_figure,
    memory_figure,
    study_figures,
)
from alphasel.plots.report import write_report
from alphasel.study.collect import collect_runs, collect_study
from alphasel.study.stats import format_interval
from alphasel.training.record import COMPONENTS, RunWriter

#: t quantiles 0.975 with 1 and 2 degrees of freedom, from a printed table.
T_975 = {1: 12.7062047, 2: 4.3026527}
EVAL_STEPS = (0, 10, 20)
TRAIN_STEPS = (5, 10, 15, 20)
#: label → (loss offset, modules adapted, peak memory base MB)
LABELS = {"random": (0.0, 4, 500.0), "alora": (-0.2, 4, 520.0), "all": (-0.4, 12, 700.0),
          "full": (-0.5, None, 2000.0)}


def eval_loss(label: str, seed: int, index: int) -> float:
    """Distinct, known eval losses: each seed has its own level and slope."""
    return 3.0 + LABELS[label][0] - (0.4 + 0.05 * seed) * index + 0.02 * seed ** 2


def train_loss(label: str, seed: int, index: int) -> float:
    return 4.0 + LABELS[label][0] - 0.3 * index + 0.1 * seed


def alpha_shift_of(label: str, seed: int) -> float:
    return {"random": 0.1, "alora": 0.3, "all": 0.2}[label] * (1 + seed)


def expected_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval, computed without the code under test."""
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    half = T_975[len(data) - 1] * float(data.std(ddof=1)) / math.sqrt(len(data))
    return mean, mean - half, mean + half


def write_run(path: Path, label: str, seed: int, extra_eval: bool = False,
              model_id: str = "toy/llama", lr: float = 2e-4) -> Path:
    """A complete run record as `alphasel train` leaves it, with known metrics."""
    modules = LABELS[label][1]
    plan = None if modules is None else InjectionPlan(
        modules=[PlannedModule(name=f"model.layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj",
                               block=i // 2, kind="qv"[i % 2], rows=32, cols=32, rank=8,
                               lora_alpha=8, alpha=3.0, selection_alpha=None)
                 for i in range(modules)],
        scheme=label, k=modules // 2, unit="block", kinds=["q", "v"])
    writer = RunWriter.create(path)
    writer.write_config({"model_id": model_id, "data": "toy",
                         "method": "full" if plan is None else "lora",
                         "scheme": None if plan is None else label,
                         "config": {"seed": seed, "lr": lr, "reselect": False}})
    if plan is not None:
        writer.write_plan(plan)
    evals = [eval_loss(label, seed, index) for index in range(len(EVAL_STEPS))]
    for index, step in enumerate(TRAIN_STEPS):
        writer.log_metrics({"step": step, "epoch": step / 20, "loss": train_loss(label, seed,
                                                                                 index)})
    for step, value in zip(EVAL_STEPS, evals, strict=True):
        writer.log_metrics({"step": step, "epoch": step / 20, "eval_loss": value})
    if extra_eval:  # this seed evaluated once more: one value there, no band
        evals.append(1.0)
        writer.log_metrics({"step": 30, "epoch": 1.5, "eval_loss": 1.0})
    writer.log_metrics({"step": 20, "epoch": 1.0, "alpha_seconds": 0.5})  # no loss: skipped
    if plan is not None:
        pd.DataFrame([{"epoch": epoch, "step": 20 * epoch, "name": module.name,
                       "block": module.block, "kind": module.kind,
                       "alpha": 3.0 + epoch * alpha_shift_of(label, seed), "xmin": 1.0,
                       "D": 0.1, "num_pl_spikes": 4, "adapted": True}
                      for epoch in (0, 1) for module in plan.modules]
                     ).to_csv(path / "alpha_history.csv", index=False)
    writer.write_summary({"eval_loss": evals[-1], "best_eval_loss": min(evals),
                          "wall_s": 100.0 + 10 * seed + (modules or 40),
                          "tokens_per_s": 50.0,
                          "peak_memory_mb": LABELS[label][2] + seed,
                          "memory_breakdown": memory_breakdown(label, seed),
                          "trainable_params": 0 if plan is None else plan.trainable_params,
                          "total_params": 9000})
    return path


def memory_breakdown(label: str, seed: int) -> dict[str, float]:
    """Known components: each a function of the label's peak and the seed."""
    peak = LABELS[label][2] + seed
    return {component: peak / (index + 2) + seed for index, component in enumerate(COMPONENTS)}


def write_study(root: Path, entries: list[dict], model: str = "toy/llama") -> Path:
    """A study directory as `alphasel study` writes it; an entry's ``state``: complete
    (default), failed (error.json), missing (nothing), extra_eval (complete, one more eval)."""
    runs = []
    for index, entry in enumerate(entries):
        label = entry["label"]
        unmatched = label in ("all", "full")
        listed = {"run_id": f"run-{index}", "label": label, "scheme": label,
                  "k": None if label == "full" else entry.get("k", 2),
                  "rank": None if label == "full" else 8, "seed": entry["seed"], "sweep": {},
                  "matched": not unmatched,
                  "budget": None if unmatched else entry.get("budget", 1024),
                  "trainable_params": None, "config": {}, "plan": None}
        runs.append(listed)
        run_dir = root / "runs" / listed["run_id"]
        state = entry.get("state", "complete")
        if state == "failed":
            run_dir.mkdir(parents=True)
            (run_dir / "error.json").write_text(json.dumps(
                {"type": "RuntimeError", "error": "CUDA out of memory"}))
        elif state != "missing":
            write_run(run_dir, label, entry["seed"], extra_eval=state == "extra_eval",
                      model_id=model)
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.json").write_text(json.dumps({
        "record": "alphasel-study", "model": model, "data": "stdlib-code",
        "schemes": list(dict.fromkeys(entry["label"] for entry in entries)), "k": [2],
        "unit": "block", "rank": [8], "seeds": [0, 1, 2], "task": "causal", "method": "lora",
        "estimator": "ks", "train": {}, "sweep": {}, "created": "2025-01-01T00:00:00+00:00"}))
    (root / "matrix.json").write_text(json.dumps({"runs": runs}))
    return root


@pytest.fixture
def study(tmp_path) -> Path:
    """random and all on seeds 0-2; alora's seed 2 failed and its seed 1 evaluated at step 30
    too; full's seed 2 never started."""
    return write_study(tmp_path / "study", [
        *({"label": "random", "seed": seed} for seed in range(3)),
        {"label": "alora", "seed": 0}, {"label": "alora", "seed": 1, "state": "extra_eval"},
        {"label": "alora", "seed": 2, "state": "failed"},
        *({"label": "all", "seed": seed, "k": 6} for seed in range(3)),
        {"label": "full", "seed": 0}, {"label": "full", "seed": 1},
        {"label": "full", "seed": 2, "state": "missing"},
    ])


def traces(fig, group: str) -> dict[str, object]:
    """A group's traces by part (mean, ci_low, ci_high, runs, ...)."""
    return {trace.meta["part"]: trace for trace in fig.data
            if trace.meta and trace.meta["group"] == group}


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("alphasel plot: error: ")
    return lines[0]


# ---- figures -----------------------------------------------------------------------------------

def test_loss_curves_mean_and_band_match_hand_computation(study):
    fig = loss_curves_figure(collect_study(study))
    assert {trace.meta["group"] for trace in fig.data} == {
        "random", "alora", "all (unmatched)", "full (unmatched)"}
    random = traces(fig, "random")
    assert list(random["mean"].x) == list(EVAL_STEPS)
    for index, step in enumerate(EVAL_STEPS):
        mean, low, high = expected_interval([eval_loss("random", seed, index)
                                             for seed in range(3)])
        assert random["mean"].y[index] == pytest.approx(mean)
        assert random["ci_low"].y[index] == pytest.approx(low, rel=1e-6)
        assert random["ci_high"].y[index] == pytest.approx(high, rel=1e-6)
        assert list(random["ci_high"].x)[index] == step
    assert random["ci_high"].fill == "tonexty" and random["ci_low"].fill is None
    # alora: the failed seed 2 is absent (two seeds, t with 1 df); step 30 has one seed:
    # on the mean line, without a band.
    alora = traces(fig, "alora")
    assert list(alora["mean"].x) == [*EVAL_STEPS, 30]
    assert alora["mean"].y[-1] == pytest.approx(1.0)
    assert list(alora["ci_low"].x) == list(EVAL_STEPS)
    mean, low, high = expected_interval([eval_loss("alora", seed, 2) for seed in range(2)])
    assert (alora["mean"].y[2], alora["ci_low"].y[2], alora["ci_high"].y[2]) == pytest.approx(
        (mean, low, high), rel=1e-6)
    assert alora["mean"].customdata[2][0] == 2 and alora["mean"].customdata[3][0] == 1


def test_loss_curves_smooth_each_run_then_average(study):
    runs = collect_study(study)
    fig = loss_curves_figure(runs, smooth=3)
    values = {seed: [eval_loss("random", seed, index) for index in range(3)] for seed in range(3)}
    # Centred window of 3 over 3 points: the ends average the two points they have.
    smoothed = {seed: [np.mean(v[:2]), np.mean(v), np.mean(v[1:])] for seed, v in values.items()}
    expected = [np.mean([smoothed[seed][index] for seed in range(3)]) for index in range(3)]
    assert list(traces(fig, "random")["mean"].y) == pytest.approx(expected)
    assert "moving average over 3" in fig.layout.title.text
    unsmoothed = traces(loss_curves_figure(runs), "random")["mean"].y
    assert list(unsmoothed) != pytest.approx(expected)


def test_training_loss_curves_are_thinned_to_the_point_cap(study, monkeypatch):
    runs = collect_study(study)
    full = traces(loss_curves_figure(runs, metric="loss"), "random")["mean"]
    assert list(full.x) == list(TRAIN_STEPS)
    assert full.y[1] == pytest.approx(np.mean([train_loss("random", seed, 1)
                                               for seed in range(3)]))
    monkeypatch.setattr(figures, "MAX_CURVE_POINTS", 3)
    thinned = traces(loss_curves_figure(runs, metric="loss"), "random")["mean"]
    assert list(thinned.x) == [5, 15, 20]  # every 2nd step, and the last
    assert thinned.y[1] == pytest.approx(full.y[2])
    with pytest.raises(PlotError, match="unknown curve metric 'accuracy'"):
        loss_curves_figure(runs, metric="accuracy")
    with pytest.raises(PlotError, match="--smooth 0"):
        loss_curves_figure(runs, smooth=0)


def test_final_loss_points_per_seed_mean_and_interval(study):
    fig = final_loss_figure(collect_study(study))
    for group, label, seeds in (("random", "random", 3), ("alora", "alora", 2),
                                ("all (unmatched)", "all", 3), ("full (unmatched)", "full", 2)):
        parts = traces(fig, group)
        last = [1.0 if (label, seed) == ("alora", 1) else eval_loss(label, seed, 2)
                for seed in range(seeds)]
        assert list(parts["runs"].y) == pytest.approx(last)  # the failed and missing: absent
        mean, low, high = expected_interval(last)
        assert parts["mean"].y[0] == pytest.approx(mean)
        assert parts["mean"].error_y.array[0] == pytest.approx(high - mean, rel=1e-6)
        assert parts["mean"].error_y.arrayminus[0] == pytest.approx(mean - low, rel=1e-6)
        assert parts["runs"].marker.symbol == ("circle" if label in ("random", "alora")
                                               else "circle-open")
    ticks = list(fig.layout.xaxis.ticktext)
    assert ticks == ["random<br>n=3 of 3", "alora<br>n=2 of 3", "all (unmatched)<br>n=3 of 3",
                     "full (unmatched)<br>n=2 of 3"]
    # Each group's points sit around its own tick.
    assert all(abs(x - 1) < 0.5 for x in traces(fig, "alora")["runs"].x)


def test_cost_figure_means_and_full_fine_tuning_as_a_reference_line(study):
    fig = cost_figure(collect_study(study))
    random = traces(fig, "random")
    assert list(random["peak_memory_mb"].x) == [4.0]
    mean, low, high = expected_interval([500.0, 501.0, 502.0])
    assert random["peak_memory_mb"].y[0] == pytest.approx(mean)
    assert random["peak_memory_mb"].meta["ci_high"] == pytest.approx(high, rel=1e-6)
    assert random["wall_s"].y[0] == pytest.approx(np.mean([104.0, 114.0, 124.0]))
    assert list(traces(fig, "all (unmatched)")["wall_s"].x) == [12.0]
    assert "2 blocks" in random["peak_memory_mb"].hovertemplate
    full = traces(fig, "full (unmatched)")["peak_memory_mb"]
    assert full.mode == "lines" and list(full.y) == [2000.5, 2000.5]
    assert list(full.x) == [4.0, 12.0]  # across the adapter runs' range
    assert "every weight trains" in full.name
    # One legend entry per group: the wall-time panel repeats none.
    assert sum(bool(trace.showlegend) for trace in fig.data) == 4


def test_memory_figure_stacks_the_components_beside_the_peak(study):
    fig = memory_figure(collect_study(study))
    bars = {trace.meta["part"]: trace for trace in fig.data if trace.type == "bar"}
    assert list(bars) == list(COMPONENTS) and fig.layout.barmode == "stack"
    peaks = [trace for trace in fig.data if trace.meta["part"] == "peak"]
    names = list(bars["frozen_weights_mb"].x)
    assert names == ["random", "alora", "all (unmatched)", "full (unmatched)"]
    # alora: seeds 0 and 1 complete (seed 2 failed).
    expected = np.mean([memory_breakdown("alora", seed)["optimizer_state_mb"] for seed in (0, 1)])
    assert bars["optimizer_state_mb"].y[1] == pytest.approx(expected)
    mean, low, high = expected_interval([500.0, 501.0, 502.0])
    assert [trace.x[0] for trace in peaks] == names and peaks[0].meta["group"] == "random"
    assert peaks[0].y[0] == pytest.approx(mean)
    assert peaks[0].error_y.array[0] == pytest.approx(high - mean)
    assert sum(bool(trace.showlegend) for trace in peaks) == 1


def test_alpha_shift_figure_skips_runs_without_history(study):
    fig = alpha_shift_figure(collect_study(study))
    assert {trace.meta["group"] for trace in fig.data} == {"random", "alora", "all (unmatched)"}
    parts = traces(fig, "alora")
    assert list(parts["runs"].y) == pytest.approx([0.3, 0.6])
    assert parts["mean"].y[0] == pytest.approx(0.45)
    assert [row[0] for row in parts["runs"].customdata] == ["0", "1"]


def test_cells_and_sweeps_are_separate_groups(tmp_path):
    study = write_study(tmp_path / "study", [
        {"label": "alora", "seed": seed, "budget": budget}
        for budget in (1024, 2048) for seed in range(2)])
    groups = figures.study_groups(collect_study(study))
    assert [group.name for group in groups] == ["alora · budget=1024", "alora · budget=2048"]
    assert groups[0].colour == groups[1].colour and groups[0].dash != groups[1].dash
    fig = final_loss_figure(collect_study(study))
    assert len(traces(fig, "alora · budget=2048")["runs"].y) == 2
    loose = collect_runs([write_run(tmp_path / f"run-{lr}-{seed}", "random", seed, lr=lr)
                          for lr in (1e-4, 1e-3) for seed in range(2)])
    names = {trace.meta["group"] for trace in loss_curves_figure(loose).data}
    assert names == {"random · lr=0.0001", "random · lr=0.001"}


def test_nothing_complete_gives_empty_figures_not_a_crash(tmp_path):
    study = write_study(tmp_path / "study", [
        {"label": "random", "seed": 0, "state": "failed"},
        {"label": "alora", "seed": 0, "state": "missing"}])
    drawn = study_figures(collect_study(study))
    assert list(drawn) == ["forest", "loss_curves", "final_loss", "cost", "memory",
                           "alpha_shift"]
    for name, fig in drawn.items():
        assert not fig.data
        assert ("no label shares seeds" if name == "forest" else "no complete run") in \
            fig.layout.annotations[0].text


# ---- report ------------------------------------------------------------------------------------

def test_report_leads_with_the_answer_and_shares_one_plotly(study):
    path = write_report(study)
    assert path == study / "report.html"
    page = path.read_text()
    assert "Selection study: toy/llama on stdlib-code" in page
    # One plotly.js beside the report, loaded by it and by every figure's own page.
    assert (study / "plotly.min.js").read_text() == get_plotlyjs()
    assert get_plotlyjs()[:300] not in page and "<script src='plotly.min.js'" in page
    assert page.count("Plotly.newPlot") == 6 and '<script src="http' not in page
    # The answer first: the forest plot and the verdicts before the table.
    assert page.index("id='forest'") < page.index("class='verdicts'") < page.index(
        "class='comparison'") < page.index("id='loss_curves'")
    assert "<div class='scroll'><table class='comparison'>" in page
    size = sum(file.stat().st_size for file in study.rglob("*") if file.is_file())
    assert size < 6e6
    last = [eval_loss("random", seed, 2) for seed in range(3)]
    mean, low, high = expected_interval(last)
    assert format_interval(mean, low, high) in page
    # alora − random, paired by seed: seeds 0 and 1 pair; seed 1's last eval was 1.0.
    mean, low, high = expected_interval([eval_loss("alora", 0, 2) - eval_loss("random", 0, 2),
                                         1.0 - eval_loss("random", 1, 2)])
    assert format_interval(mean, low, high) in page
    assert page.count("<tr class='unmatched'>") == 2 and "all (unmatched)" in page
    assert "12 runs: 10 complete, 1 failed, 1 missing" in page
    assert "RuntimeError: CUDA out of memory" in page
    assert "href='figures/cost.html'" in page
    for name in ("forest", "loss_curves", "final_loss", "cost", "memory", "alpha_shift"):
        alone = (study / "figures" / f"{name}.html").read_text()
        assert alone.count("Plotly.newPlot") == 1 and 'src="../plotly.min.js"' in alone
    assert not list(study.rglob(".*.tmp"))  # atomic writes leave no temporary file


def test_report_says_which_metric_it_compares_and_which_way_is_better(study):
    page = write_report(study).read_text()
    assert "Paired t-tests of the final eval_loss (lower is better)" in page
    assert "negative means a lower eval_loss than the baseline, which is better" in page
    for summary in study.glob("runs/*/summary.json"):  # a task metric beside the loss
        values = json.loads(summary.read_text())
        values["eval_accuracy"] = 1 - values["eval_loss"] / 10
        summary.write_text(json.dumps(values))
    page = write_report(study, metric="eval_accuracy").read_text()
    assert "Paired t-tests of the final eval_accuracy (higher is better)" in page
    assert "positive means a higher eval_accuracy than the baseline, which is better" in page
    assert "paired difference in eval_accuracy" in page


def test_report_inline_is_one_self_contained_page(study):
    page = write_report(study, plotlyjs="inline").read_text()
    assert page.count(get_plotlyjs()[:300]) == 1  # plotly.js inlined once
    assert "plotly.min.js" not in page and not (study / "plotly.min.js").exists()
    alone = (study / "figures" / "cost.html").read_text()
    assert alone.count(get_plotlyjs()[:300]) == 1
    with pytest.raises(PlotError, match="--plotlyjs web: use one of inline, directory, cdn"):
        write_report(study, plotlyjs="web")
    with pytest.raises(PlotError, match="--format gif: use one or more of png, svg, pdf"):
        write_report(study, formats=("gif",))


def test_report_of_a_study_where_nothing_completed(tmp_path):
    study = write_study(tmp_path / "study", [
        {"label": "random", "seed": 0, "state": "failed"},
        {"label": "random", "seed": 1, "state": "missing"}])
    page = write_report(study).read_text()
    assert "No run has completed yet" in page
    assert "Plotly.newPlot" not in page and not (study / "figures").exists()
    assert "2 runs: 1 failed, 1 missing" in page


def test_report_refuses_what_is_not_a_study(tmp_path):
    run = write_run(tmp_path / "run", "random", 0)
    with pytest.raises(StudyError, match="holds no matrix.json"):
        write_report(run)
    assert not (run / "report.html").exists()


# ---- CLI ---------------------------------------------------------------------------------------

def test_plot_compare_study_writes_the_report_by_default(study, capsys):
    assert main(["plot", "compare", str(study), "--smooth", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(study / "report.html")
    assert "moving average over 2" in (study / "figures" / "loss_curves.html").read_text()
    out = study / "elsewhere" / "alora.html"
    assert main(["plot", "compare", str(study), "--figure", "final_loss", "--metric",
                 "best_eval_loss", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "best eval loss per run" in out.read_text()
    # A figure with other options than the report's gets a file of its own beside them.
    assert main(["plot", "compare", str(study), "--figure", "loss_curves", "--metric",
                 "loss"]) == 0
    assert capsys.readouterr().out.strip() == str(study / "figures" / "loss_curves-loss.html")
    assert "training loss by step" in (study / "figures" / "loss_curves-loss.html"
                                               ).read_text()


def test_plot_compare_loose_runs_of_two_models_warns_once(tmp_path, capsys):
    paths = [str(write_run(tmp_path / f"{model}-{seed}", "random", seed, model_id=f"toy/{model}"))
             for model in ("llama", "gpt2") for seed in range(2)]
    out = tmp_path / "final.html"
    assert main(["plot", "compare", *paths, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    warning = captured.err.strip().splitlines()
    assert len(warning) == 1 and "2 models" in warning[0] and "toy/gpt2" in warning[0]
    page = out.read_text()
    # The figure's JSON escapes "/" and "<" (\\u002f, \\u003c), so read its groups back as JSON.
    groups = {json.loads(f'"{text}"')
              for text in re.findall(r'"group":"((?:[^"\\]|\\.)*)"', page)}
    assert groups == {"random · model=toy/llama", "random · model=toy/gpt2"}


@pytest.mark.parametrize("case, message", [
    ("unknown figure", "unknown compare figure 'surface'"),
    ("bad suffix", "use a file ending in .html"),
    ("report as png", "the report is one HTML page"),
    ("report of runs", "--figure report is a study's page"),
    ("not a study", "neither a study"),
    ("bad smooth", "--smooth 0"),
    ("metric of cost", "--metric applies to forest, loss_curves and final_loss"),
    ("smooth on a table plot", "--smooth applies to `plot compare` only"),
    ("two tables", "draws one alpha table"),
])
def test_plot_compare_bad_input_is_one_line_exit_2(case, message, study, tmp_path, capsys):
    run = write_run(tmp_path / "run", "random", 0)
    out = tmp_path / "out" / "fig.html"
    args = ["plot", "compare", str(study)]
    if case == "unknown figure":
        args += ["--figure", "surface"]
    elif case == "bad suffix":
        out = tmp_path / "out" / "fig.txt"
        args += ["--figure", "cost"]
    elif case == "report as png":
        out = tmp_path / "out" / "report.png"
    elif case == "report of runs":
        args = ["plot", "compare", str(run), "--figure", "report"]
    elif case == "not a study":
        (tmp_path / "empty").mkdir()
        args = ["plot", "compare", str(tmp_path / "empty")]
    elif case == "bad smooth":
        args += ["--smooth", "0"]
    elif case == "metric of cost":
        args += ["--figure", "cost", "--metric", "eval_loss"]
    elif case == "smooth on a table plot":
        args = ["plot", "heatmap", "table.csv", "--smooth", "3"]
    elif case == "two tables":
        args = ["plot", "heatmap", "a.csv", "b.csv"]
    assert main([*args, "--out", str(out)]) == 2
    line = error_line(capsys)
    assert message in line
    assert not out.parent.exists() and not (study / "report.html").exists()
