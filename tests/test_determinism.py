"""Deterministic mode (`train.deterministic: true`): the same command twice gives bit-identical
weights and history (1 replica and 2 logical-CPU replicas), and a run killed with SIGKILL at an
arbitrary step, re-run with the same command, ends with the weights of the uninterrupted run.

Each run is a fresh process: op determinism is process-wide.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parents[1]
TINY = ["--epochs", "2", "--steps-per-epoch", "4", "--set", "data.batch_size=32", "--set", "model.encoder_width=8",
        "--set", "model.hidden_dim=32", "--set", "model.projection_dim=16", "--set", "eval.probe_epochs=1",
        "--set", "eval.max_examples=64", "--set", "export.formats=[]", "--set", "eval.random_init=false",
        "--set", "eval.tensorboard=false", "--set", "train.deterministic=true"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")


def _train(run_dir, *extra, **popen):
    command = [sys.executable, "-m", "amcl_keras.cli", "train", "--run-dir", str(run_dir), *TINY, *extra]
    if popen:
        return subprocess.Popen(command, env=ENV, cwd=ROOT, **popen)
    finished = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


def _weights(run_dir):
    arrays = {}
    with h5py.File(run_dir / "final.weights.h5") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def _history(run_dir, drop=("seconds",)):
    records = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in drop} for record in records]


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 2])
def test_the_same_command_twice_gives_bit_identical_weights_and_history(replicas, tmp_path):
    extra = ["--set", f"train.cpu_replicas={replicas}"] + (["--set", "train.strategy=default"] if replicas == 1 else [])
    for name in ("a", "b"):
        _train(tmp_path / name, *extra)
    first, second = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert first.keys() == second.keys() and len(first) > 20
    assert [name for name in first if not np.array_equal(first[name], second[name])] == []
    assert _history(tmp_path / "a") == _history(tmp_path / "b")
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("a", "b")]
    assert results[0]["trained"] == results[1]["trained"] and results[0]["replicas"] == replicas


# The demo's own model and batch (small_convnet width 32, 256 pairs): big enough that the step's kernels run
# multi-threaded, where two ops running at once used to make 3 of 6 runs of the same command differ (up to 1.7e-5).
DEMO_SIZE = ["--epochs", "1", "--steps-per-epoch", "3", "--set", "train.deterministic=true", "--set",
             "export.formats=[]", "--set", "eval.probe_epochs=1", "--set", "eval.max_examples=200", "--set",
             "eval.random_init=false", "--set", "eval.tensorboard=false"]


@pytest.mark.slow
@pytest.mark.parametrize("replicas,runs", [(1, 3), (2, 2)])
def test_the_demo_size_is_deterministic_too(replicas, runs, tmp_path):
    extra = ["--set", f"train.cpu_replicas={replicas}"] + (["--set", "train.strategy=default"] if replicas == 1 else [])
    weights = []
    for index in range(runs):
        command = [sys.executable, "-m", "amcl_keras.cli", "train", "--run-dir", str(tmp_path / str(index)),
                   *DEMO_SIZE, *extra]
        finished = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
        assert finished.returncode == 0, finished.stderr[-3000:]
        weights.append(_weights(tmp_path / str(index)))
    assert len(weights[0]) > 50
    for other in weights[1:]:
        assert [name for name in weights[0] if not np.array_equal(weights[0][name], other[name])] == []


def _wait_for_backup(process, run_dir, at_least, log):
    state_path, deadline = run_dir / "backup" / "state.json", time.time() + 300
    while time.time() < deadline:
        state = json.loads(state_path.read_text()) if state_path.is_file() else None
        if state and (state["epoch"], state["step"]) >= at_least:
            return state
        assert process.poll() is None, log.read_text()
        time.sleep(0.01)
    pytest.fail(f"no backup at or after {at_least} within 300 s")


@pytest.mark.slow
def test_killed_or_preempted_runs_resume_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL at an arbitrary step (after a per-step backup), and SIGTERM (pre-emption: a backup at
    the next step boundary, exit code 75): re-running the same command ends with the weights of the
    uninterrupted run, bit for bit."""
    extra = ["--set", "train.strategy=default", "--set", "train.backup_every_steps=1"]
    _train(tmp_path / "whole", *extra)
    whole = _weights(tmp_path / "whole")

    killed = tmp_path / "killed"
    log = tmp_path / "killed.log"
    process = _train(killed, *extra, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        _wait_for_backup(process, killed, (1, 1), log)  # mid-way through epoch 2
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert not (killed / "results.json").exists()
    assert "Resuming" in _train(killed, *extra).stderr
    again = _weights(killed)
    assert [name for name in whole if not np.array_equal(whole[name], again[name])] == []

    preempted = tmp_path / "preempted"
    log = tmp_path / "preempted.log"
    only_epoch_backups = ["--set", "train.strategy=default", "--set", "train.backup_every_steps=1000"]
    process = _train(preempted, *only_epoch_backups, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    _wait_for_backup(process, preempted, (1, 0), log)  # epoch 1 done: now inside epoch 2
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 75, log.read_text()
    assert "pre-empted" in log.read_text() and "Re-run the same command to resume" in log.read_text()
    state = json.loads((preempted / "backup" / "state.json").read_text())
    # written at the step boundary after the signal (at the epoch's end if the signal came in its last step)
    assert (state["epoch"], state["step"]) in {(1, 1), (1, 2), (1, 3), (2, 0)}
    finished = _train(preempted, *only_epoch_backups)
    assert "Resuming" in finished.stderr
    again = _weights(preempted)
    assert [name for name in whole if not np.array_equal(whole[name], again[name])] == []
