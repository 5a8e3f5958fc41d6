import pytest
"""Two local workers with MultiWorkerMirroredStrategy (subprocesses, TF_CONFIG on 127.0.0.1)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import keras
import numpy as np

from tests.methods import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch(argv, tmp_path, name):
    """Start both workers with their TF_CONFIG; returns the finished processes (bounded by a timeout)."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        scratch = tmp_path / f"{name}-tmp{index}"
        scratch.mkdir()
        env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", WORKER_INDEX=str(index),
                   TMPDIR=str(scratch), TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"{name}-worker{index}.log", "w")
        processes.append((subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for process, _ in processes:
            process.wait(timeout=300)
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.kill()
            log.close()
    logs = [(tmp_path / f"{name}-worker{index}.log").read_text() for index in range(2)]
    for (process, _), log in zip(processes, logs):
        assert process.returncode == 0, log[-3000:]
    return logs


def test_one_step_on_two_workers_equals_one_process_on_the_global_batch(tmp_path):
    out = tmp_path / "chief.npz"
    _launch([sys.executable, "-m", "tests.multi_worker_step", str(out)], tmp_path, "step")
    result = np.load(out)
    assert int(result["replicas"]) == 2

    keras.utils.set_random_seed(0)
    view1, view2 = helpers.views()
    model = helpers.build(helpers.DEFAULT_METHOD, True)
    loss = helpers.one_step(model, view1, view2)["loss"][0]
    np.testing.assert_allclose(float(result["loss"]), loss, rtol=1e-5)
    for index, weight in enumerate(model.weights):
        np.testing.assert_allclose(result[f"w{index}"], weight.numpy(), rtol=1e-5,
                                   atol=1e-5 * max(1.0, float(np.abs(weight.numpy()).max())), err_msg=weight.path)


@pytest.mark.slow
def test_amcl_train_on_two_workers_writes_the_run_directory_once_from_the_chief(tmp_path):
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "amcl_keras.cli", "train", "--run-dir", str(run_dir), "--epochs", "2",
            "--steps-per-epoch", "2", "--set", "train.strategy=multi_worker", "--set", "data.batch_size=32",
            "--set", "model.encoder_width=4", "--set", "model.hidden_dim=16", "--set", "model.projection_dim=8",
            "--set", "eval.probe_epochs=1", "--set", "eval.max_examples=64", "--set", "export.formats=[onnx]"]
    _launch(argv, tmp_path, "train")
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]  # one writer: each epoch once
    results = json.loads((run_dir / "results.json").read_text())
    assert results["strategy"] == "CollectiveAllReduceStrategy" and results["replicas"] == 2  # = MultiWorkerMirrored
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["encoder.onnx", "metadata.json"]
    assert not (run_dir / "backup").exists()
    assert not list((tmp_path / "train-tmp1").glob("amcl-worker-*")), "the non-chief's scratch folder is removed"


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_the_same_step_and_a_rerun_resumes(tmp_path):
    """TF's PreemptionCheckpointHandler: SIGTERM to the non-chief worker makes both workers save a
    checkpoint at the same step and exit with code 75; re-running both finishes the run, each epoch
    written once, and reports where it resumed from."""
    import signal
    import time

    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "amcl_keras.cli", "train", "--run-dir", str(run_dir), "--epochs", "3",
            "--steps-per-epoch", "6", "--set", "train.strategy=multi_worker", "--set", "data.batch_size=32",
            "--set", "model.encoder_width=4", "--set", "model.hidden_dim=16", "--set", "model.projection_dim=8",
            "--set", "eval.probe_epochs=1", "--set", "eval.max_examples=64", "--set", "export.formats=[]",
            "--set", "train.backup_every_steps=1000"]
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}

    def start(name):
        processes = []
        for index in range(2):
            scratch = tmp_path / f"{name}-tmp{index}"
            scratch.mkdir()
            env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(scratch),
                       TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            log = open(tmp_path / f"{name}-worker{index}.log", "w")
            processes.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        return processes

    def logs(name):
        return "\n".join((tmp_path / f"{name}-worker{i}.log").read_text()[-2000:] for i in range(2))

    first = start("first")
    state, deadline = run_dir / "backup" / "state.json", time.time() + 300
    try:
        while not state.is_file():  # epoch 1 done: now inside epoch 2
            assert time.time() < deadline and all(p.poll() is None for p in first), logs("first")
            time.sleep(0.02)
        first[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=180) for p in first]
    finally:
        for p in first:
            if p.poll() is None:
                p.kill()
    assert codes == [75, 75], logs("first")
    assert "every worker saved a checkpoint" in logs("first")
    assert not (run_dir / "results.json").exists()

    second = start("second")
    codes = [p.wait(timeout=300) for p in second]
    assert codes == [0, 0], logs("second")
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    results = json.loads((run_dir / "results.json").read_text())
    # from the handler's checkpoint (mid-epoch), not the file backup of epoch 1's end
    assert results["resumed_from"]["epoch"] == 1 and results["resumed_from"]["step"] >= 1
    assert "Resuming" in logs("second")
