"""Ranking by any table column (--metric) and Spectrum's rule (scheme spectrum), on hand-made
tables whose answers can be worked out by hand, and once on SmolLM2's real analysis."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import alpha_table, tiny_llama

from alphasel.errors import PlanError, TableError
from alphasel.plan import InjectionPlan
from alphasel.planner import make_plan


@pytest.fixture
def table():
    """tiny_llama's 4 blocks, alpha from helpers.ALPHAS, and an snr that runs against alpha:
    block b, kind index i → snr = 10·b + i (so the deepest blocks, and within a block the last
    kinds, have the highest snr)."""
    frame = alpha_table(tiny_llama(layers=4))
    kinds = ["q", "k", "v", "o", "gate", "up", "down"]
    frame["snr"] = [10.0 * block + kinds.index(kind) if kind in kinds else np.nan
                    for block, kind in zip(frame["block"].fillna(-1), frame["kind"],
                                           strict=True)]
    frame["stable_rank"] = -frame["snr"]
    return frame


def test_alora_ranks_by_the_metric_it_is_given(table):
    plan = make_plan(table, "alora", 3, metric="snr")
    assert plan.module_names == ["model.layers.3.mlp.gate_proj", "model.layers.3.mlp.up_proj",
                                 "model.layers.3.mlp.down_proj"]
    assert [module.selection_alpha for module in plan.modules] == [34.0, 35.0, 36.0]
    assert plan.metric == "snr" and plan.order == "high"
    low = make_plan(table, "alora", 2, metric="snr", order="low")
    assert low.module_names == ["model.layers.0.self_attn.q_proj",
                                "model.layers.0.self_attn.k_proj"]
    # The order flag means the same for every metric: high = the highest values first.
    assert make_plan(table, "alora", 2, metric="stable_rank").module_names == \
        low.module_names


def test_blora_ranks_blocks_by_the_metrics_mean(table):
    plan = make_plan(table, "blora", 1, metric="snr")
    assert {module.block for module in plan.modules} == {3}
    assert plan.modules[0].selection_alpha == pytest.approx(33.0)
    assert make_plan(table, "blora", 1).metric == "alpha"  # the default is unchanged


def test_spectrum_takes_the_top_fraction_of_each_kind(table):
    """4 matrices per kind: a fraction of 0.5 takes the 2 highest-SNR of each (blocks 3 and
    2), 0.3 takes ⌊4 · 0.3⌋ = 1 of each, as Spectrum's int(n · top_percent / 100) does."""
    half = make_plan(table, "spectrum", fraction=0.5)
    assert len(half.modules) == 14 and {m.block for m in half.modules} == {2, 3}
    assert half.fraction == 0.5 and half.metric == "snr" and half.unit == "matrix"
    assert {m.block for m in make_plan(table, "spectrum", fraction=0.3).modules} == {3}
    assert len(make_plan(table, "spectrum", fraction=1.0).modules) == 28


def test_spectrum_ranks_within_each_kind_not_across(table):
    """A kind whose snr is low everywhere still gives its best matrices."""
    table.loc[table["kind"] == "q", "snr"] *= 1e-3
    plan = make_plan(table, "spectrum", fraction=0.25)
    assert sorted(m.kind for m in plan.modules) == sorted(["q", "k", "v", "o", "gate", "up",
                                                          "down"])


def test_spectrum_meets_a_budget_by_its_fraction(table):
    reference = make_plan(table, "blora", 2)
    plan = make_plan(table, "spectrum", budget=reference.trainable_params)
    assert plan.trainable_params == reference.trainable_params
    assert plan.fraction == 0.5


def test_a_noise_free_matrix_ranks_first_and_its_plan_still_saves(table, tmp_path):
    table.loc[table["name"] == "model.layers.0.self_attn.q_proj", "snr"] = math.inf
    plan = make_plan(table, "alora", 1, metric="snr")
    assert plan.module_names == ["model.layers.0.self_attn.q_proj"]
    saved = InjectionPlan.load(plan.save(tmp_path / "plan.json"))
    assert saved.modules[0].selection_alpha is None  # JSON has no inf


@pytest.mark.parametrize("options, message", [
    (dict(scheme="alora", k=2, metric="loss"), "unknown metric 'loss': use one of alpha"),
    (dict(scheme="random", k=2, metric="snr"), "--metric ranks the matrices of alora, blora"),
    (dict(scheme="spectrum", fraction=0), r"--fraction 0 must lie in \(0, 1\]"),
    (dict(scheme="spectrum", fraction=1.5), r"--fraction 1.5 must lie in \(0, 1\]"),
    (dict(scheme="spectrum", k=3), "give --fraction \\(or --budget\\) instead of --k"),
    (dict(scheme="spectrum"), "scheme spectrum needs --fraction"),
    (dict(scheme="alora", k=2, fraction=0.5), "--fraction applies to scheme spectrum only"),
    (dict(scheme="spectrum", fraction=0.1), "--fraction 0.1 chooses no matrix"),
])
def test_bad_metric_options_are_refused_in_one_line(table, options, message):
    scheme = options.pop("scheme")
    with pytest.raises(PlanError, match=message):
        make_plan(table, scheme, **options)


def test_a_table_without_the_metric_says_what_it_has_and_how_to_get_it(table):
    old = table.drop(columns=["snr"])
    with pytest.raises(TableError, match=r"no 'snr' column \(it has alpha, stable_rank\).*"
                                         "re-analyse"):
        make_plan(old, "spectrum", fraction=0.5)
    empty = table.assign(snr=np.nan)
    with pytest.raises(TableError, match="'snr' column has no values .* re-analyse"):
        make_plan(empty, "alora", 2, metric="snr")


def test_the_cli_plans_by_snr_and_refuses_a_bad_fraction(tmp_path, table):
    analysis = tmp_path / "table.csv"
    table.to_csv(analysis, index=False)
    out = tmp_path / "plan.json"
    done = subprocess.run([sys.executable, "-m", "alphasel", "plan", "--analysis",
                           str(analysis), "--scheme", "spectrum", "--fraction", "0.25",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert InjectionPlan.load(out).scheme == "spectrum"
    bad = subprocess.run([sys.executable, "-m", "alphasel", "plan", "--analysis",
                          str(analysis), "--scheme", "spectrum", "--fraction", "2", "--out",
                          str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--fraction 2" in bad.stderr and not (tmp_path / "bad.json").exists()


def test_re_selection_refuses_a_plan_ranked_by_another_metric(table):
    from alphasel.errors import TrainConfigError
    from alphasel.training import TrainConfig
    from alphasel.training.trainer import _checked_inputs

    plan = make_plan(table, "spectrum", fraction=0.5)
    with pytest.raises(TrainConfigError, match="this plan ranks by snr"):
        _checked_inputs(plan, TrainConfig(reselect=True), None)


@pytest.mark.integration
def test_spectrum_on_smollm2_takes_a_quarter_of_each_kind():
    import alphasel

    table = alphasel.analyze("smollm2", progress=False)
    plan = make_plan(table, "spectrum", fraction=0.25)
    kinds = [kind for kind in plan.kinds if (table["kind"] == kind).any()]
    counts = {kind: sum(m.kind == kind for m in plan.modules) for kind in kinds}
    assert counts == dict.fromkeys(kinds, 30 // 4)  # 30 blocks per kind, ⌊30 / 4⌋ of each
    snr = table.set_index("name")["snr"]
    for kind in kinds:
        chosen = [m.name for m in plan.modules if m.kind == kind]
        others = table[(table["kind"] == kind) & ~table["name"].isin(chosen)]["snr"]
        assert min(snr[chosen]) >= others.max()


def test_a_study_matches_spectrum_and_a_metric_to_its_budget(table):
    """In a study, spectrum and alora:metric=snr meet the reference budget (3 blocks at rank 8)
    like any matrix-unit scheme, and a metric on a scheme that ignores it is refused."""
    from alphasel.errors import StudyError
    from alphasel.study.matrix import plan_scheme, unit_budget
    from alphasel.study.spec import SchemeSpec

    kinds = sorted(set(table["kind"]) - {"embed", "head", "other"})
    budget = unit_budget(table, kinds, "block", 3, 8)
    for text in ("spectrum", "alora:metric=snr"):
        plan = plan_scheme(table, SchemeSpec.parse(text), 3, 8, "block", budget, 0)
        assert abs(plan.trainable_params - budget) <= 0.05 * budget, text
        assert plan.metric == "snr"
    with pytest.raises(StudyError, match="metric applies to alora and blora"):
        SchemeSpec.parse("random:metric=snr").check()
