"""What a run does on machines this CPU is not: several GPUs in one process, a process group,
rank devices, the CUDA memory counters, alpha on the model's device. torch.cuda, accelerate's
PartialState and torch.distributed are stood in for; every test runs here."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
from helpers import FAST, alpha_table, byte_tokenizer, code_data, tiny_llama

from alphasel.errors import RunError, TrainConfigError
from alphasel.planner import make_plan
from alphasel.training import TrainConfig, callbacks, distributed, train
from alphasel.training import alpha as alpha_module
from alphasel.training import trainer as trainer_module
from alphasel.training.record import RunWriter, run_directory


def _state(processes=1, main=True, device="cpu"):
    return SimpleNamespace(num_processes=processes, is_main_process=main,
                           device=torch.device(device), wait_for_everyone=lambda: None)


def _gpus(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_one_process_seeing_two_gpus_is_refused_before_anything_runs(monkeypatch):
    """The Trainer would wrap it in DataParallel: batch × 2 while the record says one process."""
    monkeypatch.setattr(distributed, "process_state", lambda timeout: _state())
    _gpus(monkeypatch, 2)
    with pytest.raises(TrainConfigError, match=r"sees 2 GPUs.*torchrun --nproc_per_node 2"):
        distributed.start_process(TrainConfig())
    _gpus(monkeypatch, 1)
    distributed.start_process(TrainConfig())  # one GPU per process trains
    monkeypatch.setattr(distributed, "process_state", lambda timeout: _state(processes=2))
    _gpus(monkeypatch, 2)
    distributed.start_process(TrainConfig())  # torchrun: each rank takes its own


def test_the_cli_refuses_two_gpus_before_its_inline_analysis(monkeypatch):
    """An inline plan analyses for minutes: the refusal comes first."""
    from alphasel.cli import train as cli_train

    monkeypatch.setattr(distributed, "process_state", lambda timeout: _state())
    monkeypatch.setattr(cli_train, "inline_plan",
                        lambda args, seed: pytest.fail("analysed before the refusal"))
    _gpus(monkeypatch, 2)
    with pytest.raises(TrainConfigError, match="sees 2 GPUs"):
        cli_train._planned_once(SimpleNamespace(), TrainConfig())


def test_the_process_group_waits_as_long_as_ddp_timeout(monkeypatch):
    import accelerate

    seen = {}

    def partial_state(cpu=False, **kwargs):
        seen.update(kwargs, cpu=cpu)
        return _state()

    monkeypatch.setattr(accelerate, "PartialState", partial_state)
    distributed.start_process(TrainConfig(ddp_timeout=7200))
    assert seen["timeout"] == timedelta(seconds=7200)
    distributed.start_process(TrainConfig())
    assert seen["timeout"] == timedelta(seconds=1800)  # not NCCL's ten minutes


def test_the_trainer_gets_the_same_timeout(tmp_path):
    from alphasel.training.builder import build_trainer

    tokenizer = byte_tokenizer()
    trainer = build_trainer(tiny_llama(), tokenizer, code_data(tokenizer),
                            TrainConfig(max_steps=1, ddp_timeout=7200, **FAST), tmp_path, [],
                            progress=False, autocast=None)
    assert trainer.args.ddp_timeout == 7200


def test_the_4bit_probe_runs_on_the_ranks_own_device_after_the_group_set_it(monkeypatch):
    """Probing plain ``cuda`` before the rank's device is set opens a context on GPU 0 in every
    rank; the probe now follows the process state and uses its device."""
    from alphasel.training import models

    calls = []
    monkeypatch.setattr(distributed, "process_state",
                        lambda timeout: calls.append("state") or _state(2, device="cpu"))
    monkeypatch.setattr(models, "check_4bit_supported",
                        lambda device=None: calls.append(("probe", device)))
    distributed.start_process(TrainConfig(quantize="4bit"))
    assert calls == ["state", ("probe", torch.device("cpu"))]
    calls.clear()
    with pytest.raises(TrainConfigError):  # no plan: refused, and nothing probed yet
        trainer_module._checked_inputs(None, TrainConfig(quantize="4bit"), None)
    assert calls == []


def test_peak_memory_counters_restart_from_a_released_cache(monkeypatch):
    """Reserved memory's peak resets only to what is still reserved: the cache goes first."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: calls.append("reset"))
    callbacks.start_memory_tracking()
    assert calls == ["empty_cache", "reset"]


def _fake_broadcast(monkeypatch, value):
    import torch.distributed

    def broadcast(payload, src=0):
        payload[0] = ("ok", value)

    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast)


def test_inline_planning_runs_on_the_main_process_only(monkeypatch):
    """Under torchrun the other ranks receive the main process's table and plan."""
    from alphasel.cli import train as cli_train

    planned = ("table", "plan")
    monkeypatch.setattr(distributed, "process_state", lambda timeout: _state(2, main=False))
    monkeypatch.setattr(cli_train, "inline_plan",
                        lambda args, seed: pytest.fail("a non-main rank analysed the model"))
    _fake_broadcast(monkeypatch, planned)
    assert cli_train._planned_once(SimpleNamespace(), TrainConfig()) == planned


def test_ranks_holding_different_first_plans_are_refused(monkeypatch):
    import torch.distributed

    plan = make_plan(alpha_table(tiny_llama()), "blora", 1)
    other = make_plan(alpha_table(tiny_llama()), "blora", 1, order="low")

    def gather(out, names):
        out[:] = [names, other.module_names]

    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    with pytest.raises(RunError, match="different plans"):
        distributed.check_same_modules(_state(2), plan)


def test_train_checks_its_first_plan_on_every_rank(monkeypatch, tmp_path):
    checked = []
    monkeypatch.setattr(trainer_module, "check_same_modules",
                        lambda state, plan: checked.append(plan.module_names))
    tokenizer = byte_tokenizer()
    plan = make_plan(alpha_table(tiny_llama()), "blora", 1)
    train(tiny_llama(), plan, code_data(tokenizer),
          TrainConfig(max_steps=1, generate=False, **FAST), tokenizer=tokenizer,
          out=tmp_path / "run", progress=False)
    assert checked == [plan.module_names]


def test_alpha_is_measured_on_the_device_the_model_lives_on(monkeypatch):
    """The effective weights are formed and fitted where the model is (a GPU's), not copied to
    the main process's CPU."""
    seen = {}
    real_effective = alpha_module.effective_weights

    def effective(model, names, device="cpu"):
        seen["effective"] = device
        return real_effective(model, names)

    def fit(matrix, name, estimator, device, downsampling):
        seen["fit"] = (device, type(matrix))
        return {"alpha": 3.0}

    monkeypatch.setattr(alpha_module, "model_device", lambda model: torch.device("cuda", 1))
    monkeypatch.setattr(alpha_module, "effective_weights", effective)
    monkeypatch.setattr(alpha_module, "analyze_matrix", fit)
    model = tiny_llama()
    name = "model.layers.0.self_attn.q_proj"
    rows = alpha_module.measure(model, [name], set(), alpha_module.AlphaOptions(), 0, 0)
    assert seen == {"effective": torch.device("cuda", 1), "fit": ("cuda:1", torch.Tensor)}
    assert rows[0]["alpha"] == 3.0


def test_resume_refuses_another_global_batch(tmp_path):
    path = tmp_path / "run"
    writer = RunWriter.create(path)
    writer.write_config({"data_fingerprint": "f", "world_size": 1,
                         "config": {"batch_size": 4, "grad_accum": 2}})
    with pytest.raises(RunError, match="global batch of 8 .* a global batch of 16"):
        run_directory(None, path, False, "m", "l", "d", "f", 2)
    assert run_directory(None, path, False, "m", "l", "d", "f", 1) == path
    # The recorded global batch is the reference where the record holds one.
    writer.write_config({"data_fingerprint": "f", "world_size": 1, "batch": {"global": 16},
                         "config": {"batch_size": 4, "grad_accum": 2}})
    with pytest.raises(RunError, match="global batch of 16 .* a global batch of 8"):
        run_directory(None, path, False, "m", "l", "d", "f", 1)


def test_alpha_is_measured_one_module_at_a_time(monkeypatch):
    """A model's worth of effective weights on the GPU at once would not fit beside it."""
    asked = []
    real_effective = alpha_module.effective_weights

    def effective(model, names, device="cpu"):
        asked.append(list(names))
        return real_effective(model, names)

    monkeypatch.setattr(alpha_module, "effective_weights", effective)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    alpha_module.measure(tiny_llama(), names, set(), alpha_module.AlphaOptions(), 0, 0)
    assert asked == [[name] for name in names]
