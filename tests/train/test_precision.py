"""The dtype policy on tiny checkpoints stored as the hub stores them (bf16, fp16 config.json):
what loads, what trains, what a fold keeps, what the record says, and a diverged run."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import (
    FAST,
    alpha_table,
    byte_tokenizer,
    code_data,
    save_causal_lm,
    tiny_llama,
)
from transformers import TrainerCallback

from alphasel.errors import RunError, TrainConfigError
from alphasel.planner import make_plan
from alphasel.training import TrainConfig, train
from alphasel.training.precision import resolve_precision
from alphasel.training.reselect import fold_adapters


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer(pad_is_eos=True)


@pytest.fixture(scope="module")
def plan():
    return make_plan(alpha_table(tiny_llama()), "blora", 1)


def _rounded_llama() -> torch.nn.Module:
    """A tiny Llama whose weights bf16 holds exactly: its bf16- and fp32-stored copies are one
    model."""
    return tiny_llama().to(torch.bfloat16).float()


class _KeepModel(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model


@pytest.mark.parametrize("config, stored, on_gpu, expected", [
    (dict(), torch.bfloat16, False, ("float32", None)),
    (dict(bf16=True), torch.bfloat16, False, ("bfloat16", "bf16")),
    (dict(), torch.bfloat16, True, ("bfloat16", "bf16")),
    (dict(), torch.float16, True, ("float16", "fp16")),
    (dict(fp16=True), torch.bfloat16, True, ("float32", "fp16")),
    (dict(), torch.float32, True, ("float32", None)),
    (dict(method="full"), torch.bfloat16, True, ("float32", None)),
    (dict(method="full", bf16=True), torch.bfloat16, True, ("float32", "bf16")),
    (dict(dtype="float16"), torch.bfloat16, False, ("float16", "fp16")),
    (dict(dtype="float32", bf16=True), torch.bfloat16, True, ("float32", "bf16")),
    (dict(bf16=True), torch.float32, True, ("bfloat16", "bf16")),  # one rule on every machine
    (dict(bf16=True), torch.float32, False, ("bfloat16", "bf16")),
    (dict(fp16=True), torch.bfloat16, False, ("float32", "fp16")),  # bf16 may overflow fp16
    (dict(), torch.bfloat16, "no bf16", ("float32", None)),  # a GPU without bf16 (V100, T4)
])
def test_the_policy_resolves_base_and_autocast(config, stored, on_gpu, expected):
    precision = resolve_precision(TrainConfig(**config), stored, bool(on_gpu),
                                  bf16_supported=on_gpu is True)
    assert (precision.base, precision.autocast) == expected
    assert precision.trainable == "float32"


def test_contradicting_dtypes_are_refused_at_once():
    with pytest.raises(TrainConfigError) as caught:
        TrainConfig(dtype="bfloat16", fp16=True)
    assert "--dtype bfloat16 computes in bf16 autocast" in str(caught.value)
    with pytest.raises(TrainConfigError, match="--method full trains every weight"):
        TrainConfig(dtype="bfloat16", method="full")
    with pytest.raises(TrainConfigError, match="--dtype 'half' is not one of"):
        TrainConfig(dtype="half")


def _full_step(tmp_path, folder, name):
    keep = _KeepModel()
    tokenizer = byte_tokenizer(pad_is_eos=True)
    record = train(str(folder), None, code_data(tokenizer),
                   TrainConfig(method="full", max_steps=2, lr=1e-3, generate=False,
                               save_adapter=False, **FAST),
                   out=tmp_path / name, progress=False, callbacks=[keep])
    return record, {key: value.detach().clone() for key, value in keep.model.state_dict().items()}


def test_full_fine_tuning_from_a_bf16_checkpoint_trains_float32_master_weights(tmp_path):
    """The bf16-stored copy loads as float32 on a CPU, so its two steps move every weight as the
    fp32-stored copy's do; in bf16 most of each small update would round away."""
    model = _rounded_llama()
    half = save_causal_lm(tmp_path / "bf16", dtype=torch.bfloat16, model=model)
    full = save_causal_lm(tmp_path / "fp32", dtype=torch.float32, model=_rounded_llama())
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    start = {key: value.float() for key, value in model.state_dict().items()}
    half_record, half_weights = _full_step(tmp_path, half, "run-bf16")
    full_record, full_weights = _full_step(tmp_path, full, "run-fp32")
    assert half_record.config["precision"] == {"stored": "bfloat16", "base": "float32",
                                               "trainable": "float32", "autocast": None}
    assert all(weight.dtype == torch.float32 for weight in half_weights.values())
    for key, before in start.items():
        moved, expected = half_weights[key] - before, full_weights[key] - before
        assert torch.linalg.norm(moved - expected) <= 1e-3 * torch.linalg.norm(expected) + 1e-12
    assert half_record.summary["eval_loss"] == pytest.approx(full_record.summary["eval_loss"],
                                                             abs=1e-6)


def _lora_delta(module) -> torch.Tensor:
    """ΔW = scaling · B A in float64, formed here rather than by the code under test."""
    return module.scaling["default"] * (module.lora_B["default"].weight.double()
                                        @ module.lora_A["default"].weight.double())


def test_a_fold_into_a_bf16_base_keeps_the_update(tokenizer):
    """ΔW of 0.3% of W folded into a bf16 base: the folded weight is float32 W + ΔW (rounding
    back into bf16 would lose about half of ΔW)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama().to(torch.bfloat16),
                           LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(0)
    layers = {}
    with torch.no_grad():
        for name, module in model.get_base_model().named_modules():
            if hasattr(module, "lora_B"):
                base = module.get_base_layer().weight.float()
                module.lora_A["default"].weight.copy_(torch.randn(
                    module.lora_A["default"].weight.shape, generator=generator))
                module.lora_B["default"].weight.copy_(torch.randn(
                    module.lora_B["default"].weight.shape, generator=generator))
                module.lora_B["default"].weight.mul_(
                    3e-3 * torch.linalg.norm(base) / torch.linalg.norm(_lora_delta(module)))
                delta = _lora_delta(module)
                layers[name] = (base.double() + delta, delta)
    folded = fold_adapters(model)
    for name, (expected, delta) in layers.items():
        weight = folded.get_submodule(name).weight
        assert weight.dtype == torch.float32 and not weight.requires_grad
        error = torch.linalg.norm(weight.double() - expected) / torch.linalg.norm(delta)
        assert error < 1e-3, name


def test_fp16_checkpoint_trains_with_fp16_autocast(tmp_path, tokenizer, plan):
    """A frozen fp16 base with float32 adapters under --fp16: finite losses, adapters that move,
    the resolved dtypes in config.json."""
    folder = save_causal_lm(tmp_path / "fp16", dtype=torch.float16)
    keep = _KeepModel()
    record = train(str(folder), plan, code_data(tokenizer),
                   TrainConfig(max_steps=3, fp16=True, lr=1e-2, generate=False, **FAST),
                   out=tmp_path / "run", progress=False, callbacks=[keep])
    assert record.config["precision"] == {"stored": "float16", "base": "float16",
                                          "trainable": "float32", "autocast": "fp16"}
    trainable = [p for p in keep.model.parameters() if p.requires_grad]
    frozen = [p for p in keep.model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.float16 for p in frozen)
    assert any(p.abs().sum() > 0 for n, p in keep.model.named_parameters() if "lora_B" in n)
    assert record.summary["eval_loss"] is not None


def test_bf16_and_fp32_stored_copies_agree_to_autocast_tolerance(tmp_path, tokenizer, plan):
    """LoRA under --bf16 from a bf16-stored copy (base held in bf16) and from the fp32-stored
    copy of the same weights held in float32: the same losses up to bf16 autocast rounding."""
    half = save_causal_lm(tmp_path / "bf16", dtype=torch.bfloat16, model=_rounded_llama())
    full = save_causal_lm(tmp_path / "fp32", model=_rounded_llama())
    runs = []
    for folder, dtype in ((half, "auto"), (full, "float32")):
        runs.append(train(str(folder), plan, code_data(tokenizer),
                          TrainConfig(max_steps=3, bf16=True, dtype=dtype, generate=False,
                                      **FAST),
                          out=tmp_path / f"run-{dtype}", progress=False))
    assert [run.config["precision"]["base"] for run in runs] == ["bfloat16", "float32"]
    losses = [run.summary["eval_loss"] for run in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)


def test_a_diverged_run_fails_instead_of_recording_null(tmp_path, tokenizer, plan):
    model = tiny_llama()
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    with pytest.raises(RunError, match="training diverged: the eval loss at step 2 is nan"):
        train(model, plan, code_data(tokenizer),
              TrainConfig(max_steps=2, generate=False, **FAST), tokenizer=tokenizer,
              out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_an_in_memory_half_model_is_held_as_the_policy_says(tmp_path, tokenizer, plan):
    """On a CPU, --dtype auto trains an in-memory bf16 model's adapters over a float32 base."""
    keep = _KeepModel()
    record = train(tiny_llama().to(torch.bfloat16), plan, code_data(tokenizer),
                   TrainConfig(max_steps=1, generate=False, **FAST), tokenizer=tokenizer,
                   out=tmp_path / "run", progress=False, callbacks=[keep])
    assert record.config["precision"]["stored"] == "bfloat16"
    assert {p.dtype for p in keep.model.parameters()} == {torch.float32}


def test_the_record_holds_the_batch_every_process_sees(tmp_path, tokenizer, plan):
    record = train(tiny_llama(), plan, code_data(tokenizer),
                   TrainConfig(max_steps=1, grad_accum=2, generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    assert record.config["batch"] == {"per_device": 4, "grad_accum": 2, "processes": 1,
                                      "n_gpu": 0, "global": 8}


def test_generations_after_a_fold_into_a_half_base_run_under_its_autocast(tmp_path, tokenizer,
                                                                           plan):
    """Re-selection leaves float32 folded matrices in a bf16 model; generate() runs outside the
    Trainer's autocast, so it brings its own."""
    folder = save_causal_lm(tmp_path / "bf16", dtype=torch.bfloat16)
    record = train(str(folder), plan, code_data(tokenizer),
                   TrainConfig(max_steps=2, reselect_every=1, bf16=True, max_new_tokens=4,
                               **{k: v for k, v in FAST.items() if k != "max_new_tokens"}),
                   out=tmp_path / "run", progress=False)
    assert record.config["precision"]["base"] == "bfloat16" and record.summary["rounds"] == 2
    generations = [json.loads(line) for line in
                   (record.path / "generations.jsonl").read_text().splitlines()]
    assert {row["when"] for row in generations} == {"before", "after"}


def test_a_resumed_run_keeps_the_base_it_started_with(tmp_path, tokenizer, plan, monkeypatch):
    """A run begun with a bf16 base (as --dtype auto gives on a GPU) resumes on a bf16 base on
    a CPU too, where auto alone would choose float32."""
    from alphasel.training import resume

    folder = save_causal_lm(tmp_path / "bf16", dtype=torch.bfloat16)
    config = TrainConfig(max_steps=4, save_every=2, generate=False, dtype="bfloat16", **FAST)

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(str(folder), plan, code_data(tokenizer), config, out=tmp_path / "run",
              progress=False, callbacks=[Stop()])
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    written["config"]["dtype"] = "auto"  # as a GPU run with --dtype auto records it
    (tmp_path / "run" / "config.json").write_text(json.dumps(written))
    keep = _KeepModel()
    record = resume(tmp_path / "run", data=code_data(tokenizer), progress=False,
                    callbacks=[keep])
    assert record.complete
    frozen = {p.dtype for p in keep.model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}


def test_an_in_memory_4bit_model_is_not_cast(tmp_path, tokenizer):
    """A model transformers loaded in 4 bits refuses to be cast (ValueError): the policy leaves
    bitsandbytes-packed models as they are."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from alphasel.training.models import check_4bit_supported, load_model

    try:
        check_4bit_supported()
    except TrainConfigError as err:
        pytest.skip(str(err))
    folder = save_causal_lm(tmp_path / "tiny", model=tiny_llama(hidden=64))
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=BitsAndBytesConfig(load_in_4bit=True,
                                                       bnb_4bit_compute_dtype=torch.float32))
    loaded, _, _ = load_model(model, tokenizer=tokenizer, dtype=torch.float32)
    assert loaded is model
