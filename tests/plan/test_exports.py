"""Plan exports (peft, axolotl, regex): each, read with its tool's own matching rule and applied
to a model's own module and parameter names, selects exactly the plan's matrices."""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest
import torch
import yaml
from helpers import ANALYSIS_LLAMA, alpha_table, name, tiny_bert, tiny_llama
from peft import LoraConfig, get_peft_model

import alphasel
import alphasel.cli
from alphasel.errors import PlanError
from alphasel.exports import (
    AXOLOTL_PATTERNS_SINCE,
    EXPORTS,
    axolotl_unfrozen,
    axolotl_yaml,
    export_text,
    module_regexes,
    peft_config_dict,
    write_export,
)
from alphasel.plan import InjectionPlan, PlannedModule, adapted_modules
from alphasel.planner import make_plan
from alphasel.table import save_analysis
from alphasel.training.adapters import unfreeze

# -- the tools' matching rules, as their sources state them --------------------------------------


def planned(plan: InjectionPlan, prefix: str = "") -> dict[str, tuple[int, float]]:
    return {prefix + module.name: (module.rank, module.lora_alpha) for module in plan.modules}


def adapted(model: torch.nn.Module, config: LoraConfig) -> dict[str, tuple[int, float]]:
    """Module → (r, lora_alpha) after PEFT injects ``config`` into ``model``."""
    layers = adapted_modules(get_peft_model(model, config))
    return {module: (layer.r["default"], layer.lora_alpha["default"])
            for module, layer in layers.items()}


def axolotl_lora_config(fragment: dict) -> LoraConfig:
    """The LoraConfig axolotl's loader builds from the fragment's keys: each handed to PEFT as
    it is (src/axolotl/loaders/adapter.py)."""
    return LoraConfig(r=fragment["lora_r"], lora_alpha=fragment["lora_alpha"],
                      target_modules=fragment["lora_target_modules"],
                      rank_pattern=fragment.get("lora_rank_pattern") or {},
                      alpha_pattern=fragment.get("lora_alpha_pattern") or {})


#: axolotl's optional index range at the end of an unfrozen_parameters entry: ``...[0:32]``.
AXOLOTL_RANGE = re.compile(r"^(.+)\[(\d*)(?::(\d*))?\]$")


def axolotl_unfreezes(patterns: list[str], model: torch.nn.Module) -> set[str]:
    """Parameters axolotl keeps trainable (src/axolotl/utils/freeze.py): every "." not
    followed by "+" is a literal dot, and a name is kept when a pattern re.match-es it."""
    assert not any(AXOLOTL_RANGE.match(pattern) for pattern in patterns)
    regexes = [re.compile(re.sub(r"\.(?!\+)", r"\\.", pattern)) for pattern in patterns]
    return {parameter for parameter, _ in model.named_parameters()
            if any(regex.match(parameter) for regex in regexes)}


def regex_selects(lines: list[str], model: torch.nn.Module) -> dict[str, list[str]]:
    """Pattern → the module names it fullmatches, checked to be the ones it finds with
    re.search too: the anchors hold for readers that search."""
    names = [module for module, _ in model.named_modules()]
    selected = {line: [module for module in names if re.fullmatch(line, module)]
                for line in lines}
    assert selected == {line: [module for module in names if re.search(line, module)]
                        for line in lines}
    return selected


def assert_exports_select_exactly(plan: InjectionPlan, build) -> None:
    """Every export, read with its tool's rule on a fresh ``build()`` model, selects exactly
    the plan's modules (and for LoRA their ranks and lora_alpha)."""
    config = LoraConfig(**json.loads(export_text(plan, "peft")))
    assert adapted(build(), config) == planned(plan)

    fragment = yaml.safe_load(export_text(plan, "axolotl"))
    assert adapted(build(), axolotl_lora_config(fragment)) == planned(plan)

    # The same matrices as an unfreeze plan: axolotl unfreezes what --method unfreeze trains
    # (each weight, and its bias where it has one).
    unfrozen = dataclasses.replace(plan, budget=None).trained_as("unfreeze")
    fragment = yaml.safe_load(export_text(unfrozen, "axolotl"))
    assert set(fragment) == {"unfrozen_parameters"}
    model = build()
    unfreeze(model, unfrozen)
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert {f"{module}.weight" for module in plan.module_names} <= trained
    assert axolotl_unfreezes(fragment["unfrozen_parameters"], build()) == trained
    with pytest.raises(PlanError, match="use --export axolotl .* or --export regex"):
        export_text(unfrozen, "peft")
    lines = export_text(unfrozen, "regex").splitlines()
    if len({(module.rank, module.lora_alpha) for module in plan.modules}) > 1:
        with pytest.raises(PlanError, match="cannot carry: use --export peft"):
            export_text(plan, "regex")
    else:
        assert export_text(plan, "regex").splitlines() == lines
    assert lines == module_regexes(plan)
    assert regex_selects(lines, build()) == {line: [module] for line, module
                                             in zip(lines, plan.module_names, strict=True)}


# -- tiny models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table():
    return alpha_table(tiny_llama(layers=4, **ANALYSIS_LLAMA))


def tiny() -> torch.nn.Module:
    return tiny_llama(layers=4, **ANALYSIS_LLAMA)


def module(block: int, kind: str, rank: int, lora_alpha: float | None = None) -> PlannedModule:
    return PlannedModule(name=name(block, kind), block=block, kind=kind, rows=32, cols=32,
                         rank=rank, lora_alpha=rank if lora_alpha is None else lora_alpha,
                         alpha=None, selection_alpha=None)


def test_block_plan_and_allocated_ranks_select_exactly_the_plan(table):
    blocks = make_plan(table, "blora", k=2)
    ranks = make_plan(table, "alora", k=6, rank_alloc="alpha", budget=3000)
    assert len({module.rank for module in ranks.modules}) > 1
    for plan in (blocks, ranks):
        assert_exports_select_exactly(plan, tiny)


def test_unfreeze_exports_cover_the_biases_of_a_bert():
    """BERT's projections carry biases, which --method unfreeze trains and axolotl's patterns
    must unfreeze too."""
    import pandas as pd

    from alphasel.layout import block_of, kind_of

    table = alpha_table(tiny_bert(num_labels=2))
    table["kind"] = [kind_of(name) for name in table["name"]]
    table["block"] = pd.array([block_of(name) for name in table["name"]], dtype="Int64")
    plan = make_plan(table, "blora", k=1, method="unfreeze")
    assert_exports_select_exactly(dataclasses.replace(plan, method="lora", modules=[
        dataclasses.replace(module, rank=8, lora_alpha=8) for module in plan.modules]),
        lambda: tiny_bert(num_labels=2))


def test_layer_1_never_catches_layer_11():
    plan = InjectionPlan(modules=[module(1, "q", 2), module(11, "v", 8), module(10, "q", 8)],
                         scheme="alora", k=3, unit="matrix", kinds=["q", "v"])
    assert_exports_select_exactly(plan, lambda: tiny_llama(layers=12, **ANALYSIS_LLAMA))


def test_peft_export_is_the_plans_own_lora_config(table, tmp_path):
    plan = make_plan(table, "alora", k=6, rank_alloc="alpha", budget=3000)
    data = json.loads(export_text(plan, "peft"))
    config = plan.to_lora_config()
    assert data["peft_type"] == "LORA" and data["target_modules"] == plan.module_names
    assert (data["r"], data["lora_alpha"]) == (config.r, config.lora_alpha)
    assert data["rank_pattern"] == config.rank_pattern and data["rank_pattern"]
    assert data["alpha_pattern"] == config.alpha_pattern and data["alpha_pattern"]
    # Saved as a PEFT adapter folder holds it, from_pretrained reads the same config.
    (tmp_path / "adapter_config.json").write_text(export_text(plan, "peft"))
    loaded = LoraConfig.from_pretrained(tmp_path)
    assert adapted(tiny(), loaded) == planned(plan)


def test_peft_export_also_fits_a_model_that_wraps_the_checkpoint(table):
    """PEFT's rule is exact-or-suffix: a task model holding the checkpoint under a prefix gets
    the same modules (the regex and axolotl's unfreeze patterns are exact names instead)."""
    plan = make_plan(table, "blora", k=1)
    wrapper = torch.nn.Module()
    wrapper.backbone = tiny()
    config = LoraConfig(**json.loads(export_text(plan, "peft")))
    assert adapted(wrapper, config) == planned(plan, prefix="backbone.")


def test_special_characters_in_names_are_escaped_for_every_rule():
    """``a+b`` as a regex matches ``ab`` and ``aab``: each export escapes it, also under
    axolotl's rewrite of dots. A child module and a ``weight_scale`` parameter (as FP8
    checkpoints have) test the end anchors."""
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleDict({key: torch.nn.Linear(4, 4, bias=False)
                                        for key in ("a+b", "ab", "aab", "a-b")})
    model.blocks["a+b"].scale = torch.nn.Identity()
    model.blocks["a-b"].weight_scale = torch.nn.Parameter(torch.ones(1))
    plan = InjectionPlan(
        modules=[PlannedModule(name="blocks.a+b", block=None, kind="other", rows=4, cols=4,
                               rank=2, lora_alpha=4, alpha=None, selection_alpha=None),
                 PlannedModule(name="blocks.a-b", block=None, kind="other", rows=4, cols=4,
                               rank=1, lora_alpha=4, alpha=None, selection_alpha=None)],
        scheme="alora", k=2, unit="matrix", kinds=["other"])
    assert_exports_select_exactly(plan, lambda: copy.deepcopy(model))


def test_axolotl_fragment_keys_and_types(table):
    uniform = yaml.safe_load(axolotl_yaml(make_plan(table, "blora", k=2, lora_alpha=16)))
    assert uniform["adapter"] == "lora" and uniform["lora_r"] == 8
    assert uniform["lora_alpha"] == 16 and isinstance(uniform["lora_alpha"], int)
    assert "lora_rank_pattern" not in uniform and "lora_alpha_pattern" not in uniform
    assert "lora_target_linear" not in uniform
    for target in uniform["lora_target_modules"]:
        re.compile(target)  # axolotl's config check compiles every target as a regex

    text = axolotl_yaml(make_plan(table, "alora", k=6, rank_alloc="alpha", budget=3000))
    allocated = yaml.safe_load(text)
    assert allocated["lora_rank_pattern"] and allocated["lora_alpha_pattern"]
    assert all(isinstance(value, int) and value > 0  # axolotl: dict[str, PositiveInt]
               for field in ("lora_rank_pattern", "lora_alpha_pattern")
               for value in allocated[field].values())
    assert f"lora_rank_pattern:  # needs axolotl >= {AXOLOTL_PATTERNS_SINCE}" in text
    assert text.startswith("# alphasel ")


def test_axolotl_refuses_a_fractional_lora_alpha():
    plan = InjectionPlan(modules=[module(0, "q", 4, lora_alpha=6.5)], scheme="alora", k=1,
                         unit="matrix", kinds=["q"])
    with pytest.raises(PlanError, match=r"integer lora_alpha only.*lora_alpha 6.5.*export peft"):
        axolotl_yaml(plan)
    assert json.loads(export_text(plan, "peft"))["lora_alpha"] == 6.5


def test_axolotl_unfrozen_patterns_are_anchored_names_with_plain_dots(table):
    plan = make_plan(table, "first", k=1, kinds="q,v")
    assert axolotl_unfrozen(plan) == [f"^{name(0, 'q')}.(weight|bias)$",
                                      f"^{name(0, 'v')}.(weight|bias)$"]


def test_unknown_export_and_empty_plan_are_refused(table, tmp_path):
    plan = make_plan(table, "first", k=1)
    with pytest.raises(PlanError, match="unknown export 'lisa': choose one of peft, axolotl, "
                                        "regex"):
        export_text(plan, "lisa")
    empty = InjectionPlan(modules=[], scheme="alora", k=0, unit="matrix", kinds=["q"])
    with pytest.raises(PlanError, match="no modules"):
        write_export(empty, "regex", tmp_path / "empty.txt")
    assert list(tmp_path.iterdir()) == []


def test_write_export_is_atomic(table, tmp_path):
    plan = make_plan(table, "blora", k=1)
    path = write_export(plan, "regex", tmp_path / "sub" / "modules.txt")
    assert path.read_text() == export_text(plan, "regex")
    assert [entry.name for entry in path.parent.iterdir()] == ["modules.txt"]


# -- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def analysis(runs, monkeypatch):
    monkeypatch.setattr(alphasel.cli, "COMMANDS", {"plan": "alphasel.cli.plan"})
    return save_analysis(alpha_table(tiny_llama(layers=4, **ANALYSIS_LLAMA)), "tiny-llama")


def plan_files(runs):
    return sorted((runs / "plans").glob("*.json")) if (runs / "plans").exists() else []


@pytest.mark.parametrize("export", list(EXPORTS))
def test_cli_writes_the_export_to_out_and_the_plan_under_runs(runs, analysis, tmp_path, capsys,
                                                              export):
    out = tmp_path / f"exported.{export}"
    assert alphasel.cli.main(["plan", "--scheme", "blora", "--k", "2", "--export", export,
                              "--out", str(out)]) == 0
    [plan_path] = plan_files(runs)
    plan = InjectionPlan.load(plan_path)
    assert out.read_text() == export_text(plan, export)
    printed = capsys.readouterr().out
    assert f"wrote {out}\nwrote {plan_path}\n" in printed


def test_cli_unfreeze_plan_exports_axolotl_unfrozen_parameters(runs, analysis, tmp_path, capsys):
    out = tmp_path / "unfrozen.yml"
    assert alphasel.cli.main(["plan", "--scheme", "alora", "--k", "3", "--method", "unfreeze",
                              "--export", "axolotl", "--out", str(out)]) == 0
    [plan_path] = plan_files(runs)
    plan = InjectionPlan.load(plan_path)
    assert plan.unfreezes and plan.trainable_params == sum(m.rows * m.cols
                                                           for m in plan.modules)
    assert yaml.safe_load(out.read_text()) == {"unfrozen_parameters": axolotl_unfrozen(plan)}
    printed = capsys.readouterr().out
    assert "method=unfreeze" in printed and f"{plan.trainable_params:,} trainable" in printed


@pytest.mark.parametrize(("argv", "message"), [
    (["--export", "lisa", "--out", "{out}"], "unknown export 'lisa': choose one of peft, "),
    (["--export", "lisa"], "unknown export 'lisa'"),
    (["--export", "peft"], "--export peft needs --out FILE"),
    (["--export", "axolotl", "--out", "{out}", "--lora-alpha", "12.5"],
     "integer lora_alpha only"),
    (["--method", "unfreeze", "--export", "peft", "--out", "{out}"],
     "use --export axolotl (unfrozen_parameters) or --export regex"),
    (["--method", "unfreeze", "--rank", "4"], "--rank shape adapters; --method unfreeze"),
    (["--method", "qlora"], "unknown method 'qlora'"),
])
def test_cli_bad_export_is_one_line_exit_2_and_nothing_written(runs, analysis, tmp_path, capsys,
                                                               argv, message):
    out = tmp_path / "exported"
    argv = [arg.format(out=out) for arg in argv]
    assert alphasel.cli.main(["plan", "--scheme", "blora", "--k", "2", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alphasel plan: error:")
    assert message in err
    assert not out.exists() and plan_files(runs) == []


# -- the packaged real models ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    """(alpha table, SmolLM2's architecture on the meta device: its own module names and
    shapes, no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from alphasel.sources import packaged_model

    path, _ = packaged_model("smollm2")
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return alphasel.analyze("smollm2", progress=False, cache=False), model


@pytest.fixture(scope="module")
def minilm():
    """(alpha table, MiniLM as the checkpoint holds it: a BertModel with its weights)."""
    from transformers import AutoModel

    from alphasel.sources import packaged_model

    path, _ = packaged_model("minilm")
    return alphasel.analyze("minilm", progress=False, cache=False), AutoModel.from_pretrained(path)


def real_plans(table, blocks: int, matrices: int) -> list[InjectionPlan]:
    """A block plan and a matrix plan with per-module ranks at the same budget as rank 8."""
    budget = make_plan(table, "alora", k=matrices).trainable_params
    ranked = make_plan(table, "alora", k=matrices, rank_alloc="alpha", budget=budget)
    assert len({module.rank for module in ranked.modules}) > 1
    return [make_plan(table, "blora", k=blocks), ranked]


@pytest.mark.integration
def test_smollm2_exports_select_exactly_the_plan(smollm2):
    table, model = smollm2
    for plan in real_plans(table, blocks=4, matrices=24):
        assert_exports_select_exactly(plan, lambda: copy.deepcopy(model))


@pytest.mark.integration
def test_minilm_exports_select_exactly_the_plan(minilm):
    table, model = minilm
    for plan in real_plans(table, blocks=2, matrices=8):
        assert_exports_select_exactly(plan, lambda: copy.deepcopy(model))


@pytest.mark.integration
def test_minilm_peft_export_fits_the_classifier_under_bert(minilm):
    from alphasel.training.models import load_model

    table, _ = minilm
    plan = make_plan(table, "blora", k=2, rank_alloc="alpha",
                     budget=make_plan(table, "blora", k=2).trainable_params)
    classifier, _, _ = load_model("minilm", task="classification", labels=["no", "yes"])
    config = LoraConfig(**peft_config_dict(plan))
    assert adapted(classifier, config) == planned(plan, prefix="bert.")
