"""The trainer end to end on tiny in-memory models: the run record, methods, labels, resume,
and the refusals. Each test runs the real ``train()`` for a few steps."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import (
    FAST,
    alpha_table,
    byte_tokenizer,
    code_data,
    instruction_data,
    tiny_bert,
    tiny_llama,
    topic_data,
    write_code_files,
)
from transformers import TrainerCallback

import alphasel
from alphasel.errors import DataError, PlanError, RunError, TrainConfigError
from alphasel.planner import make_plan
from alphasel.training import RunRecord, TrainConfig, list_runs, resume, train
from alphasel.training.adapters import prepare_model
from alphasel.training.builder import build_trainer
from alphasel.training.record import is_complete


@pytest.fixture
def blora_plan():
    return make_plan(alpha_table(tiny_llama()), "blora", 1)


def test_lora_run_writes_the_record_design_lays_out(tmp_path, tokenizer, blora_plan):
    out = tmp_path / "run"
    record = train(tiny_llama(), blora_plan, code_data(tokenizer),
                   TrainConfig(max_steps=6, eval_every=3, **FAST), tokenizer=tokenizer, out=out,
                   progress=False)
    assert record.complete and is_complete(out)
    files = {path.name for path in out.iterdir()}
    assert {"config.json", "plan.json", "metrics.jsonl", "generations.jsonl", "summary.json",
            "adapter"} <= files
    assert "checkpoints" not in files  # no --save-every: nothing to keep

    metrics = record.metrics()
    train_rows = metrics[metrics["loss"].notna()]
    assert train_rows["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert (train_rows["tokens_per_s"] > 0).all() and (train_rows["lr"] > 0).all()
    assert metrics.loc[metrics["eval_loss"].notna(), "step"].tolist() == [0, 3, 6]

    summary = record.summary
    assert summary["eval_loss"] == metrics["eval_loss"].dropna().iloc[-1]
    assert summary["best_eval_loss"] == metrics["eval_loss"].min()
    assert summary["trainable_params"] == blora_plan.trainable_params  # LoRA A and B only
    assert summary["total_params"] == sum(p.numel() for p in tiny_llama().parameters()) \
        + blora_plan.trainable_params
    assert summary["train_tokens"] == 6 * 4 * 40  # batches of 4 unpadded 40-token chunks
    assert summary["tokens_per_s"] > 0 and summary["peak_memory_mb"] > 0
    # Evaluations inside the loop are timed apart: tokens/s counts training time only.
    assert 0 < summary["eval_in_train_s"] < summary["train_wall_s"]
    assert summary["tokens_per_s"] == pytest.approx(
        summary["train_tokens"] / (summary["train_wall_s"] - summary["eval_in_train_s"]),
        rel=0.02)  # the summary rounds seconds to 3 decimals
    assert summary["global_step"] == 6 and summary["world_size"] == 1

    assert record.plan.module_names == blora_plan.module_names
    assert record.plan.total_params == summary["total_params"]
    config = record.config
    assert config["data"] == "toy-code" and config["data_fingerprint"] == "f-code"
    assert config["method"] == "lora" and config["scheme"] == "blora" and config["k"] == 1
    assert config["config"]["max_steps"] == 6 and "transformers" in config["versions"]

    generations = record.generations()
    assert [row["when"] for row in generations] == ["before", "after"]
    assert generations[0]["prompt"] == "def add_1(x):"
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(blora_plan.module_names)


def test_adapters_train_and_the_base_stays_frozen(tmp_path, tokenizer, blora_plan):
    model = tiny_llama()
    base_before = model.model.layers[1].self_attn.q_proj.weight.detach().clone()
    record = train(model, blora_plan, code_data(tokenizer),
                   TrainConfig(max_steps=3, lr=1e-2, generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    layer = model.model.layers[1].self_attn.q_proj  # PEFT wrapped it in place
    assert torch.equal(layer.base_layer.weight, base_before)
    assert layer.lora_B["default"].weight.abs().sum() > 0  # B starts at zero, so it learned
    assert record.summary["global_step"] == 3


@pytest.mark.parametrize("method, extra", [("dora", "magnitude"), ("rslora", None),
                                           ("full", None)])
def test_methods(tmp_path, tokenizer, blora_plan, method, extra):
    plan = None if method == "full" else blora_plan
    model = tiny_llama()
    total = sum(p.numel() for p in model.parameters())
    record = train(model, plan, code_data(tokenizer),
                   TrainConfig(method=method, max_steps=2, generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / method, progress=False)
    trainable = record.summary["trainable_params"]
    if method == "full":
        assert trainable == total and record.plan is None
        assert (tmp_path / method / "adapter" / "model.safetensors").is_file()
        # The saved model's config.json in adapter/ is not a run of its own.
        assert list_runs(tmp_path)["run_id"].tolist() == ["full"]
    elif method == "dora":  # plus one magnitude per output row of each adapted module
        assert trainable == blora_plan.trainable_params + sum(m.rows for m in blora_plan.modules)
    else:
        assert trainable == blora_plan.trainable_params
        adapter = json.loads((tmp_path / method / "adapter" / "adapter_config.json").read_text())
        assert adapter["use_rslora"] is True
    assert record.summary["eval_loss"] > 0


def test_bf16_mixed_precision_runs_on_cpu(tmp_path, tokenizer, blora_plan):
    record = train(tiny_llama(), blora_plan, code_data(tokenizer),
                   TrainConfig(max_steps=1, bf16=True, generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    assert record.complete and record.config["config"]["bf16"] is True


def test_lora_init_reaches_peft(tokenizer, blora_plan):
    model = prepare_model(tiny_llama(), blora_plan,
                          TrainConfig(lora_init="gaussian", lora_dropout=0.1))
    config = model.peft_config["default"]
    assert config.init_lora_weights == "gaussian" and config.lora_dropout == 0.1


def test_instruction_labels_mask_the_prompt_and_learn_eos_when_pad_is_eos(tmp_path, tokenizer):
    """One example's labels, token by token, as the Trainer's collator hands them to the loss."""
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    data = instruction_data()
    plan = make_plan(alpha_table(tiny_llama()), "blora", 1)
    config = TrainConfig(max_steps=1, max_seq_len=128, **FAST)
    model = prepare_model(tiny_llama(), plan, config)
    trainer = build_trainer(model, tokenizer, data, config, tmp_path, [], progress=False,
                            autocast=None)
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    prompt = tokenizer(data.train[0]["prompt"], add_special_tokens=False)["input_ids"]
    completion = tokenizer(data.train[0]["completion"], add_special_tokens=False)["input_ids"]
    expected = prompt + completion + [tokenizer.eos_token_id]
    assert ids[:len(expected)] == expected
    assert labels[:len(prompt)] == [-100] * len(prompt)
    assert labels[len(prompt):len(expected)] == completion + [tokenizer.eos_token_id]
    # Pad the pair to different lengths: the padding (EOS ids too) is never a label, while
    # each example's own final EOS is.
    short = dict(trainer.train_dataset[0])
    short = {"input_ids": short["input_ids"][:-4] + [tokenizer.eos_token_id],
             "labels": short["labels"][:-4] + [tokenizer.eos_token_id]}
    batch = trainer.data_collator([short, trainer.train_dataset[1]])
    padded_ids, padded_labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    length = len(short["input_ids"])
    assert padded_ids[length:] == [tokenizer.eos_token_id] * (len(padded_ids) - length)
    assert padded_labels[length:] == [-100] * (len(padded_ids) - length)
    assert padded_labels[length - 1] == tokenizer.eos_token_id


def test_too_short_sequences_leave_no_response_tokens(tmp_path, tokenizer, blora_plan):
    data = instruction_data(prompt_words=20)  # prompts of ~120 tokens
    with pytest.raises(DataError, match="--max-seq-len 16 leaves no response tokens"):
        train(tiny_llama(), blora_plan, data,
              TrainConfig(max_steps=1, max_seq_len=16, generate=False, **FAST),
              tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_classification_on_tiny_bert(tmp_path):
    tokenizer = byte_tokenizer()
    model = tiny_bert(num_labels=2)
    plan = make_plan(alphasel.analyze(model, progress=False), "blora", 1)
    record = train(model, plan, topic_data(tokenizer),
                   TrainConfig(task="classification", max_steps=3, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    summary = record.summary
    assert 0.0 <= summary["eval_accuracy"] <= 1.0
    assert summary["eval_accuracy"] in {i / 6 for i in range(7)}  # 6 eval examples
    # The new classifier head trains beside the adapters (PEFT's modules_to_save).
    head = sum(p.numel() for p in tiny_bert(2).classifier.parameters())
    assert summary["trainable_params"] == plan.trainable_params + head
    assert not (tmp_path / "run" / "generations.jsonl").exists()
    assert record.config["labels"] == ["awful", "fine"]


def test_a_new_classifier_head_is_seeded_by_the_training_seed(tmp_path):
    """Loading a checkpoint into a classifier initialises a new head; two runs with one seed
    start from the same head, whatever consumed the random state before (the paired design:
    MiniLM study runs of one seed once differed in step-0 eval loss through the head alone)."""
    tokenizer = byte_tokenizer()
    folder = tmp_path / "encoder"
    tiny_bert(num_labels=2).bert.save_pretrained(folder)  # the bare encoder: no head
    tokenizer.save_pretrained(folder)
    first_blocks = make_plan(alphasel.analyze(folder, progress=False), "first", 1)
    last_blocks = make_plan(alphasel.analyze(folder, progress=False), "last", 1)
    step0 = []
    for index, plan in enumerate((first_blocks, last_blocks)):
        torch.rand(1000 * (index + 1))  # a different random state before each run
        record = train(str(folder), plan, topic_data(tokenizer),
                       TrainConfig(task="classification", max_steps=1, **FAST),
                       out=tmp_path / f"run{index}", progress=False)
        metrics = record.metrics()
        step0.append(metrics.loc[metrics["step"] == 0, "eval_loss"].dropna().iloc[0])
    # LoRA's B starts at zero, so at step 0 only the head decides the output.
    assert step0[0] == step0[1]


def test_plan_from_a_base_checkpoint_aligns_to_the_task_model():
    """A plan from the bare encoder's checkpoint (`encoder.layer.0...`) fits the classifier,
    which holds the same modules under `bert.`; unrelated names are left to fail."""
    from alphasel.training.adapters import align_plan

    model = tiny_bert(num_labels=2)
    plan = make_plan(alphasel.analyze(model.bert, progress=False), "blora", 1)
    assert plan.modules[0].name.startswith("encoder.layer.")
    aligned = align_plan(plan, model)
    assert [m.name for m in aligned.modules] == [f"bert.{m.name}" for m in plan.modules]
    assert "base model prefix 'bert'" in aligned.notes[-1]
    assert align_plan(aligned, model) is aligned  # already aligned: unchanged
    llama_plan = make_plan(alpha_table(tiny_llama()), "blora", 1)
    assert align_plan(llama_plan, model) is llama_plan


class _Crash(TrainerCallback):
    """Dies right after a step's metrics line is written: the resumed run must drop that line
    (it repeats the step from the checkpoint before it) rather than log the step twice."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_continues_to_the_same_record(tmp_path, tokenizer, blora_plan):
    data = code_data(tokenizer)
    config = TrainConfig(max_steps=8, save_every=2, eval_every=4, lr=5e-3, generate=False,
                         **FAST)
    whole = train(tiny_llama(), blora_plan, data, config, tokenizer=tokenizer,
                  out=tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_llama(), blora_plan, data, config, tokenizer=tokenizer,
              out=tmp_path / "cut", progress=False, callbacks=[_Crash(5)])
    cut = RunRecord.load(tmp_path / "cut")
    assert not cut.complete and cut.metrics()["step"].max() == 5
    assert list_runs(tmp_path).set_index("run_id").loc["cut", "status"] == "incomplete"

    resumed = resume(tmp_path / "cut", model=tiny_llama(), tokenizer=tokenizer, data=data,
                     progress=False)
    assert resumed.complete and resumed.summary["resumed_from_step"] == 4
    steps = resumed.metrics()
    train_steps = steps.loc[steps["loss"].notna(), "step"].tolist()
    assert train_steps == list(range(1, 9))  # none missing, none repeated
    assert steps.loc[steps["eval_loss"].notna(), "step"].tolist() == [0, 4, 8]
    assert abs(resumed.summary["eval_loss"] - whole.summary["eval_loss"]) < 1e-3
    # Alpha of the 7 adapted modules: before training, after epoch 1 (step 6), at the end.
    alpha = pd.read_csv(tmp_path / "cut" / "alpha_history.csv")
    assert alpha.groupby("step")["name"].count().to_dict() == {0: 7, 6: 7, 8: 7}
    with pytest.raises(RunError, match="already complete"):
        resume(tmp_path / "cut", model=tiny_llama(), tokenizer=tokenizer, data=data)


def test_output_directory_holding_a_run_is_refused(tmp_path, tokenizer, blora_plan):
    config = TrainConfig(max_steps=1, generate=False, **FAST)
    data = code_data(tokenizer)
    train(tiny_llama(), blora_plan, data, config, tokenizer=tokenizer, out=tmp_path / "run",
          progress=False)
    before = (tmp_path / "run" / "summary.json").read_text()
    with pytest.raises(RunError, match="already holds a complete run: pass --overwrite"):
        train(tiny_llama(), blora_plan, data, config, tokenizer=tokenizer,
              out=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "summary.json").read_text() == before
    again = train(tiny_llama(), blora_plan, data,
                  TrainConfig(max_steps=2, generate=False, **FAST), tokenizer=tokenizer,
                  out=tmp_path / "run", overwrite=True, progress=False)
    assert json.loads(before)["global_step"] == 1 and again.summary["global_step"] == 2
    assert again.metrics()["step"].max() == 2


def test_plan_for_another_model_is_refused_before_training(tmp_path, tokenizer):
    plan = make_plan(alpha_table(tiny_llama(layers=4)), "last", 1)  # block 3
    with pytest.raises(PlanError, match="model.layers.3.self_attn.q_proj"):
        train(tiny_llama(layers=2), plan, code_data(tokenizer), TrainConfig(**FAST),
              tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_method_and_plan_must_agree(tmp_path, tokenizer, blora_plan):
    with pytest.raises(TrainConfigError, match="--method full trains every weight"):
        train(tiny_llama(), blora_plan, code_data(tokenizer), TrainConfig(method="full"),
              tokenizer=tokenizer, out=tmp_path / "a")
    with pytest.raises(TrainConfigError, match="--method dora needs a plan"):
        train(tiny_llama(), None, code_data(tokenizer), TrainConfig(method="dora"),
              tokenizer=tokenizer, out=tmp_path / "b")
    with pytest.raises(TrainConfigError, match="data 'toy-topics' is classification data"):
        train(tiny_llama(), blora_plan, topic_data(tokenizer), TrainConfig(),
              tokenizer=tokenizer, out=tmp_path / "c")


def test_alphasel_train_stays_callable_after_its_package_is_imported(tokenizer):
    import alphasel.training.data  # noqa: F401  (binds the subpackage's modules)

    config = alphasel.TrainConfig(method="full")
    plan = make_plan(alpha_table(tiny_llama()), "blora", 1)
    assert callable(alphasel.train)
    with pytest.raises(TrainConfigError, match="takes no plan"):  # the real entry ran
        alphasel.train(tiny_llama(), plan, "stdlib-code", config, tokenizer=tokenizer)


def test_report_to_tensorboard_writes_into_the_run(tmp_path, tokenizer, blora_plan):
    record = train(tiny_llama(), blora_plan, code_data(tokenizer),
                   TrainConfig(max_steps=2, report_to="tensorboard", generate=False, **FAST),
                   tokenizer=tokenizer, out=tmp_path / "run", progress=False)
    assert list((record.path / "tensorboard").glob("events.out.tfevents.*"))
    import os

    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # the next run logs to its own dir


def test_report_to_a_missing_integration_is_refused(tmp_path, tokenizer, blora_plan):
    from transformers.integrations import get_available_reporting_integrations

    if "wandb" in get_available_reporting_integrations():
        pytest.skip("wandb is installed here")
    with pytest.raises(TrainConfigError, match="pip install wandb"):
        train(tiny_llama(), blora_plan, code_data(tokenizer),
              TrainConfig(report_to="wandb", **FAST), tokenizer=tokenizer,
              out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_config_reports_every_problem_at_once():
    with pytest.raises(TrainConfigError) as caught:
        TrainConfig(method="qlora", batch_size=0, bf16=True, fp16=True, lora_init="kaiming",
                    report_to="tensorboard,slack", eval_fraction=0.9, warmup=-1)
    message = str(caught.value)
    for flag in ("--method 'qlora'", "--batch-size 0", "--bf16 and --fp16", "--lora-init",
                 "--report-to", "--eval-fraction", "--warmup"):
        assert flag in message
    assert TrainConfig().lr == 2e-4 and TrainConfig(method="full").lr == 2e-5
    assert TrainConfig(warmup=0.1).warmup_steps == 0.1 and TrainConfig(warmup=5).warmup_steps == 5
    assert TrainConfig(report_to="tensorboard,wandb").report_to == ["tensorboard", "wandb"]
    with pytest.raises(TrainConfigError,
                       match=r"4-bit weights cannot be trained in full \(--method full\)"):
        TrainConfig(method="full", quantize="4bit")


def test_4bit_error_is_one_line_when_bitsandbytes_is_missing(monkeypatch):
    import sys

    from alphasel.training.models import check_4bit_supported

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(TrainConfigError, match="--quantize 4bit needs bitsandbytes"):
        check_4bit_supported()


class _KeepModel(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model


def test_qlora_trains_on_a_4bit_checkpoint(tmp_path, tokenizer):
    """Hidden 64: on CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for inference
    (the step-0 evaluation) in blocks of 64 input features, which a 32-wide layer lacks."""
    from alphasel.training.models import check_4bit_supported

    try:
        check_4bit_supported()
    except TrainConfigError as err:
        pytest.skip(str(err))
    import bitsandbytes

    folder = tmp_path / "tiny"
    model = tiny_llama(hidden=64)
    blora_plan = make_plan(alpha_table(model), "blora", 1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    keep = _KeepModel()
    record = train(str(folder), blora_plan, code_data(tokenizer),
                   TrainConfig(quantize="4bit", max_steps=2, generate=False, **FAST),
                   out=tmp_path / "run", progress=False, callbacks=[keep])
    adapted = keep.model.get_submodule("base_model.model.model.layers.1.self_attn.q_proj")
    assert isinstance(adapted.base_layer, bitsandbytes.nn.Linear4bit)
    # TRL casts a 4-bit model's adapters to bf16; the dtype policy holds them in float32.
    assert {p.dtype for p in keep.model.parameters() if p.requires_grad} == {torch.float32}
    assert record.complete and record.config["model_format"] == "directory"
    assert record.summary["trainable_params"] == blora_plan.trainable_params
    assert record.config["config"]["quantize"] == "4bit"
    # Alpha of the dequantized 4-bit base + ΔW: one row per adapted module, at steps 0 and 2.
    alpha = pd.read_csv(record.path / "alpha_history.csv")
    assert alpha.groupby("step")["name"].count().to_dict() == {0: 7, 2: 7}
    assert alpha["alpha"].notna().all()


def test_hub_id_trains_from_the_cache_offline(tmp_path, offline_hub, tokenizer, blora_plan):
    """A hub id resolves through huggingface_hub's cache (refs/main → snapshots/<commit>),
    tokenizer included, with HF_HUB_OFFLINE=1; the record keeps the commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--tiny-org--tiny-llama"
    snapshot = repo / "snapshots" / commit
    tiny_llama().save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    record = train("tiny-org/tiny-llama", blora_plan, code_data(tokenizer),
                   TrainConfig(max_steps=1, generate=False, **FAST), out=tmp_path / "run",
                   progress=False)
    assert record.config["model_id"] == "tiny-org/tiny-llama"
    assert record.config["revision"] == commit and record.config["model_format"] == "hub"
    with pytest.raises(alphasel.AlphaselError, match="not in the cache"):
        train("tiny-org/absent", blora_plan, code_data(tokenizer), TrainConfig(**FAST),
              out=tmp_path / "absent")


def test_runs_of_different_seeds_evaluate_on_the_same_examples(tmp_path, tokenizer):
    """One eval set whatever the training seed: a capped eval split is drawn with --eval-seed,
    so two seeds' step-0 eval losses (LoRA starts at the base model) are the same number."""
    code = write_code_files(tmp_path / "code", files=60)
    plan = make_plan(alpha_table(tiny_llama()), "blora", 1)
    step0 = {}
    for seed, eval_seed in ((0, 0), (1, 0), (0, 3)):
        record = train(tiny_llama(), plan, str(code),
                       TrainConfig(max_steps=1, max_samples=20, max_seq_len=32, seed=seed,
                                   eval_seed=eval_seed, generate=False, **FAST),
                       tokenizer=tokenizer, out=tmp_path / f"run-{seed}-{eval_seed}",
                       progress=False)
        metrics = record.metrics()
        step0[seed, eval_seed] = metrics.loc[metrics["step"].eq(0) & metrics["eval_loss"]
                                             .notna(), "eval_loss"].item()
        assert record.config["config"]["eval_seed"] == eval_seed
    assert step0[0, 0] == step0[1, 0]
    assert step0[0, 0] != step0[0, 3]
