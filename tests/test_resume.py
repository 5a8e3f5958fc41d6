"""Resume after a crash: backups, kill -9 mid-epoch then the same command, run-directory rules."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import pytest

from amcl_keras import cli
from amcl_keras.backups import RunBackup
from tests.methods import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--set", "data.batch_size=64", "--set", "model.encoder_width=4", "--set", "model.hidden_dim=32",
    "--set", "model.projection_dim=16", "--set", "eval.probe_epochs=2", "--set", "eval.max_examples=300",
    "--set", "export.formats=[]",
]


def test_a_half_written_backup_leaves_the_previous_one_in_force(tmp_path):
    model = helpers.build(helpers.DEFAULT_METHOD, True)
    backup = RunBackup(tmp_path, every_steps=1)
    backup.set_model(model)
    backup.save(0, 1)
    (tmp_path / "backup-e0-s2.weights.h5").write_bytes(b"killed while writing")  # no state.json update
    (tmp_path / "state.json.partial").write_text("{")
    assert RunBackup.read_state(tmp_path)["weights"] == "backup-e0-s1.weights.h5"
    assert RunBackup.restore(helpers.build(helpers.DEFAULT_METHOD, True), tmp_path)["step"] == 1


def _state(run_dir):
    path = run_dir / "backup" / "state.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_resumes_and_writes_each_epoch_once(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "amcl_keras.cli", "train", "--run-dir", str(run_dir), "--epochs", "3",
               "--steps-per-epoch", "10", "--set", "train.backup_every_steps=2", *TINY]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    log = open(tmp_path / "first.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline, state = time.time() + 300, None
    try:
        while time.time() < deadline:
            state = _state(run_dir)
            if state and state["epoch"] == 1 and state["step"] >= 2:
                break
            assert process.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "first.log").read_text()
            time.sleep(0.02)
        else:
            pytest.fail("no mid-epoch backup within 300 s")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    killed_at = _state(run_dir)  # a later backup may have landed before the signal
    assert killed_at["epoch"] == 1 and killed_at["step"] >= 2
    assert not (run_dir / "results.json").exists()
    assert (run_dir / "config.yaml").is_file()
    first_history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in first_history] == [1]

    finished = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    step = killed_at["step"]
    if step < 10:
        assert f"1 epoch(s) done, then {step} step(s) of epoch 2" in finished.stderr
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0] == first_history[0]  # the record written before the kill is kept as it was
    assert history[1].get("resumed_at_step") == (step if step < 10 else None)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_from"]["epoch"] == 1
    assert not (run_dir / "backup").exists()
    with h5py.File(run_dir / "final.weights.h5") as weights:  # every step once: 3 epochs × 10
        assert int(weights["optimizer/vars/0"][()]) == 30
    # the learning rate reached the end of its cosine schedule on time
    assert history[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-7)


def test_run_directory_rules(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli.main(["train", "--run-dir", str(foreign), "--epochs", "1", "--steps-per-epoch", "1", *TINY]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # a bad dataset fails before anything is written: no half-made run directory
    missing = tmp_path / "never"
    assert cli.main(["train", "--run-dir", str(missing), "--set", f"data.dataset={tmp_path / 'no_such_folder'}",
                     *TINY]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()
