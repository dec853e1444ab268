"""The Ray executor: a run shipped back from a node that cannot see the study, refusals without
Ray or without a cluster, and one tiny study giving the same table on Ray as run locally."""

from __future__ import annotations

import dataclasses
import json
import socket
import sys

import pandas as pd
import pytest
from helpers import save_causal_lm, write_code_files

import alphasel.cli
from alphasel.errors import StudyError
from alphasel.study.collect import collect_study
from alphasel.study.directory import RunState, open_study, run_folder, run_state
from alphasel.study.launch import create_study, run_study
from alphasel.study.ray_executor import check_address, pack, run_ray, run_task, unpack
from alphasel.study.spec import StudySpec, parse_schemes


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> StudySpec:
    folder = save_causal_lm(tmp_path_factory.mktemp("tiny-llama"), layers=4)
    code = write_code_files(tmp_path_factory.mktemp("code"))
    return StudySpec(str(folder), str(code), parse_schemes("blora,random"), k=[1],
                     seeds=[0, 1], train={"max_steps": 2, "max_seq_len": 32, "batch_size": 2})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_run_trained_where_the_study_is_not_comes_back_whole(spec, tmp_path):
    """ship=True is what a node without the study's filesystem does: train in a temporary
    one-run study, return it packed; the driver unpacks it into the real study."""
    study = create_study(spec, tmp_path / "study", progress=False)
    _, entries = open_study(study)
    entry = entries[0]
    outcome = run_task(str(tmp_path / "elsewhere"), (study / "spec.json").read_text(),
                       entry.to_dict(), ship=True)
    assert outcome["state"] == "complete" and outcome["archive"]
    # nothing was written into the study yet
    assert run_state(run_folder(study, entry.run_id)) == RunState.MISSING
    unpack(study, entry.run_id, outcome["archive"])
    assert run_state(run_folder(study, entry.run_id)) == RunState.COMPLETE
    assert (study / "logs" / f"{entry.run_id}.log").is_file()
    config = json.loads((study / "runs" / entry.run_id / "config.json").read_text())
    assert config["config"]["seed"] == entry.seed


def test_an_archive_with_files_outside_its_run_is_refused(tmp_path):
    (tmp_path / "runs" / "other").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "x.json").write_text("{}")
    data = pack(tmp_path, "other")
    with pytest.raises(StudyError, match="outside its directory"):
        unpack(tmp_path / "target", "mine", data)


def test_without_ray_or_a_cluster_the_study_is_refused_in_one_line(spec, tmp_path, monkeypatch,
                                                                   capsys, runs):
    port = _free_port()
    with pytest.raises(StudyError, match=f"127.0.0.1:{port}: no Ray cluster answers"):
        check_address(f"127.0.0.1:{port}")
    with pytest.raises(StudyError, match="give HOST:PORT"):
        check_address("nowhere")
    args = ["study", "--model", spec.model, "--data", spec.data, "--schemes", "blora",
            "--executor", "ray", "--address", f"127.0.0.1:{port}"]
    assert alphasel.cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "no Ray cluster answers" in err and err.count("\n") == 0
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert alphasel.cli.main(args[:-2]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'alphasel[cluster]'" in err and err.count("\n") == 0
    assert not (runs / "studies").exists()  # refused before anything was analysed or written
    study = create_study(spec, tmp_path / "study", progress=False)
    _, entries = open_study(study)
    with pytest.raises(StudyError, match="--gpus-per-run -1"):
        run_ray(study, entries, gpus_per_run=-1)


@pytest.mark.integration
def test_a_study_on_a_local_ray_cluster_gives_the_local_table(spec, tmp_path):
    pytest.importorskip("ray")
    local = create_study(spec, tmp_path / "local", progress=False)
    on_ray = create_study(spec, tmp_path / "ray", progress=False)
    assert set(run_study(local).values()) == {"complete"}
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        seen = []
        states = run_study(on_ray, executor="ray",
                           report=lambda entry, state, seconds: seen.append(entry.run_id))
    finally:
        ray.shutdown()
    assert set(states.values()) == {"complete"} and sorted(seen) == sorted(states)
    columns = ["run_id", "label", "seed", "status", "trainable_params", "eval_loss",
               "best_eval_loss", "alpha_shift"]
    expected, got = (collect_study(study)[columns].sort_values("run_id").reset_index(drop=True)
                     for study in (local, on_ray))
    # Ray's workers run with one BLAS thread, the local ones with all: sums differ in the
    # last bits only.
    pd.testing.assert_frame_equal(got, expected, rtol=1e-5)
    # Resuming on Ray finds everything complete and trains nothing again.
    before = (on_ray / "runs" / expected["run_id"][0] / "summary.json").read_text()
    assert set(run_study(on_ray, executor="ray").values()) == {"complete"}
    assert (on_ray / "runs" / expected["run_id"][0] / "summary.json").read_text() == before


@pytest.mark.integration
def test_a_ray_worker_killed_mid_run_is_retried_by_ray(spec, tmp_path):
    """The Ray worker holding a run's task is killed (SIGKILL) once training has begun: the
    run's own process dies with it, Ray runs the task again, and the run completes."""
    import threading
    import time

    import psutil

    ray = pytest.importorskip("ray")
    slow = dataclasses.replace(spec, seeds=[0], schemes=parse_schemes("blora"),
                               train={**spec.train, "max_steps": 400})
    study = create_study(slow, tmp_path / "study", progress=False)
    [entry] = open_study(study)[1]
    started = run_folder(study, entry.run_id) / "config.json"
    killed: list[int] = []

    def kill_the_worker() -> None:
        while not killed:
            if started.is_file():
                for process in psutil.process_iter(["cmdline"]):
                    if any("ray::run_task" in part for part in process.info["cmdline"] or []):
                        process.kill()
                        killed.append(process.pid)
            time.sleep(0.05)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        threading.Thread(target=kill_the_worker, daemon=True).start()
        states = run_study(study, executor="ray", retries=1)
    finally:
        ray.shutdown()
    assert killed and states == {entry.run_id: RunState.COMPLETE}
