"""Where a study's runs execute: each run of ``--parallel N`` on a GPU of its own, more runs at
once than GPUs refused before anything starts, Ray tasks without GPUs shown none, and every
worker's thread counts set from its share of the CPUs, never inherited. No GPU or Ray needed:
the GPUs are a patched ``torch.cuda.device_count``, Ray a fake module that runs each task at
once in this process with the environment Ray gives one."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

import alphasel.cli
import alphasel.study.local as local
import alphasel.study.runner as runner
from alphasel.errors import StudyError
from alphasel.study.directory import SPEC_FILE
from alphasel.study.matrix import RunEntry
from alphasel.study.ray_executor import run_ray
from alphasel.study.runner import THREAD_VARIABLES, worker_environment


def _entries(count: int) -> list[RunEntry]:
    return [RunEntry(run_id=f"run-{index}", label="first", scheme="first", k=1, rank=8,
                     seed=index, sweep={}, matched=True, budget=None, trainable_params=None,
                     config={}, plan=None) for index in range(count)]


@pytest.fixture
def machine(monkeypatch):
    """A machine with ``gpus`` GPUs and ``cores`` cores, as the local executor sees it."""
    def make(gpus: int, cores: int = 8, visible: str | None = None) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(local, "usable_cores", lambda: cores)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return make


@pytest.fixture
def launched(monkeypatch) -> list[dict[str, str]]:
    """The environment of every worker process started, in order (none is started)."""
    envs: list[dict[str, str]] = []

    def run(command, stdout=None, stderr=None, env=None, preexec_fn=None):
        envs.append(env)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(runner.subprocess, "run", run)
    return envs


def test_a_worker_environment_sets_every_thread_count_and_the_gpus_it_is_given(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as a Ray worker inherits it
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "16")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    env = worker_environment(2.7, ["GPU-5e1f"])
    assert {env[name] for name in THREAD_VARIABLES} == {"2"}  # whole threads, rounded down
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-5e1f"
    assert worker_environment(0.25, [])["OMP_NUM_THREADS"] == "1"  # at least one
    assert worker_environment(1, [])["CUDA_VISIBLE_DEVICES"] == ""  # no GPU: trains on CPUs
    assert worker_environment(1, None)["CUDA_VISIBLE_DEVICES"] == "0,1"  # left as it is


def test_parallel_runs_each_hold_a_gpu_of_their_own_and_free_it_for_the_next(machine,
                                                                             monkeypatch):
    machine(gpus=3, cores=8)
    lock = threading.Lock()
    running: list[str] = []
    overlaps: list[list[str]] = []
    given: list[str] = []

    def execute(study, entry, env, retries=0):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            running.append(gpu)
            overlaps.append(list(running))
            given.append(gpu)
        time.sleep(0.05)
        with lock:
            running.remove(gpu)
        return "complete"

    monkeypatch.setattr(local, "execute", execute)
    states = local.run_local(Path("study"), _entries(7), parallel=2)
    assert set(states.values()) == {"complete"} and len(states) == 7
    assert set(given) == {"0", "1"}  # slot i on GPU i, the third GPU idle
    assert max(len(now) for now in overlaps) == 2  # two at once …
    assert all(len(set(now)) == len(now) for now in overlaps)  # … never on the same GPU


def test_gpus_are_named_as_cuda_visible_devices_lists_them(machine, launched, tmp_path):
    machine(gpus=2, cores=4, visible="GPU-aaaa, GPU-bbbb")
    assert local.gpu_slots(2) == ["GPU-aaaa", "GPU-bbbb"]
    # CUDA stops reading at the first entry naming no device: only the first two are GPUs.
    machine(gpus=2, visible="3,1,9,0")
    assert local.gpu_slots(1) == ["3"]
    local.run_local(tmp_path, _entries(1), parallel=1)
    assert launched[0]["CUDA_VISIBLE_DEVICES"] == "3"  # one GPU, even for a single run


def test_more_runs_at_once_than_gpus_is_refused_before_anything_starts(machine, launched,
                                                                       capsys, runs):
    machine(gpus=2)
    with pytest.raises(StudyError, match=r"--parallel 3: 2 GPU\(s\).*--parallel 2 or fewer"):
        local.run_local(Path("study"), _entries(3), parallel=3)
    assert launched == []
    args = ["study", "--model", "m", "--data", "d", "--schemes", "alora", "--parallel", "3"]
    assert alphasel.cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--parallel 2 or fewer" in err and "--executor ray" in err and err.count("\n") == 0
    assert not (runs / "studies").exists()  # refused before the analysis


def test_without_a_gpu_runs_keep_cuda_visible_devices_and_get_their_share_of_cores(
        machine, launched, monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited: must not survive
    machine(gpus=0, cores=8)
    local.run_local(tmp_path, _entries(1), parallel=1)
    assert "CUDA_VISIBLE_DEVICES" not in launched[0]
    assert {launched[0][name] for name in THREAD_VARIABLES} == {"8"}
    machine(gpus=0, cores=8, visible="5")
    local.run_local(tmp_path, _entries(3), parallel=3)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in launched[1:]] == ["5"] * 3
    assert {env["OMP_NUM_THREADS"] for env in launched[1:]} == {"2"}  # 8 // 3


def _fake_ray(monkeypatch, node_gpus: str, assigned: str) -> list[dict[str, float]]:
    """A ``ray`` module that runs a task at once, in the environment Ray gives a task's process:
    OMP_NUM_THREADS=1, and CUDA_VISIBLE_DEVICES ``assigned`` for a task that holds GPUs, the
    node's own ``node_gpus`` for one that holds none. Returns the resources each task asked."""
    asked: list[dict[str, float]] = []

    class Done:  # a finished task's object ref
        def __init__(self, value):
            self.value = value

    def remote(num_cpus, num_gpus, max_retries, retry_exceptions=()):
        asked.append({"num_cpus": num_cpus, "num_gpus": num_gpus})

        def wrap(task):
            def call(*args):
                with monkeypatch.context() as inside:
                    inside.setenv("OMP_NUM_THREADS", "1")
                    inside.setenv("CUDA_VISIBLE_DEVICES", assigned if num_gpus else node_gpus)
                    return Done(task(*args))
            return types.SimpleNamespace(remote=call)
        return wrap

    ray = types.SimpleNamespace(
        is_initialized=lambda: True, remote=remote, get=lambda ref: ref.value,
        wait=lambda refs, num_returns: (refs[:num_returns], refs[num_returns:]),
        shutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "ray", ray)
    return asked


@pytest.mark.parametrize("gpus_per_run, cpus_per_run, visible, threads", [
    (0, 1, "", "1"),  # no GPU reserved: none visible, whatever the node has
    (0, 2.5, "", "2"),
    (1, 4, "2", "4"),  # Ray's choice kept
    (0.5, 0.5, "2", "1"),
])
def test_a_ray_task_sees_the_gpus_and_cpus_it_holds(monkeypatch, launched, tmp_path,
                                                    gpus_per_run, cpus_per_run, visible,
                                                    threads):
    asked = _fake_ray(monkeypatch, node_gpus="0,1,2,3", assigned="2")
    (tmp_path / SPEC_FILE).write_text("{}")
    run_ray(tmp_path, _entries(2), gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run,
            ship=False)
    assert asked == [{"num_cpus": cpus_per_run, "num_gpus": gpus_per_run}]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in launched] == [visible] * 2
    assert {env[name] for env in launched for name in THREAD_VARIABLES} == {threads}


def test_a_ray_run_asking_for_several_gpus_is_refused_before_ray_starts(monkeypatch, tmp_path):
    """One process trains on one GPU: a task holding two would fail in the trainer after Ray
    scheduled it."""
    monkeypatch.setitem(sys.modules, "ray", None)  # never imported: refused first
    with pytest.raises(StudyError, match="--gpus-per-run 2: a run is one process"):
        run_ray(tmp_path, _entries(1), gpus_per_run=2)
