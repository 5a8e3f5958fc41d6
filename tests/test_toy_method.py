"""A new method costs four files: the method file, its loss file, a YAML and a test file.

tests/toy_method.py plays the method and loss files of a toy method ("align"), registered for the whole
session by tests/conftest.py; this module plays the YAML and the test file. The config, the CLI, the run's
labels and the generic suites pick the toy up without any change to the package or to those suites.
"""

import json
import pathlib
import subprocess
import sys

import keras
import pytest
import yaml

from amcl_keras import cli, config as config_lib, registry
from tests.toy_method import AMCLAlignLoss

@pytest.fixture
def toy_method():
    """The toy method's model class: tests/toy_method.py, registered for the whole session by tests/conftest.py."""
    return registry.method("toy_align").model


# --- "the YAML" -----------------------------------------------------------------------------------
TOY_YAML = """
model:
  method: toy_align
  encoder_width: 8
  num_heads: 2
  projection_dim: 8
data:
  batch_size: 32
train:
  epochs: 1
  steps_per_epoch: 3
eval:
  probe_epochs: 1
  max_examples: 128
  online_probe_every: 0
  telemetry_every: 0
  tensorboard: false
  random_init: false
export:
  formats: []
"""


def test_the_config_takes_the_toys_defaults_and_settings(toy_method):
    config = config_lib.load(None, ["model.method=toy_align"])
    assert (config.model.projection_dim, config.model.beta, config.train.learning_rate) == (16, 1e-3, 0.05)
    assert config.model.heads_share_hidden is False and config.to_dict()["model"]["heads_share_hidden"] is False
    with pytest.raises(config_lib.ConfigError, match="model.heads_share_hidden=True is out of range"):
        config_lib.load(None, ["model.method=toy_align", "model.heads_share_hidden=true"])
    with pytest.raises(config_lib.ConfigError, match="model.queue_size is a setting of moco"):
        config_lib.load(None, ["model.method=toy_align", "model.queue_size=64"])
    with pytest.raises(config_lib.ConfigError, match="model.heads_share_hidden is a setting of toy_align"):
        config_lib.load(None, ["model.heads_share_hidden=false"])


def test_the_cli_trains_the_toy_and_labels_its_run(toy_method, tmp_path, capsys):
    config_path = tmp_path / "toy_align.yaml"
    config_path.write_text(TOY_YAML)
    assert cli.main(["train", "--config", str(config_path), "--run-dir", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"] == "AMCL-ToyAlign" and results["trained"]["knn"] > 0
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and "tau_pos_0" in history[0] and "tau_pos_1" in history[0]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["method"] == "toy_align" and saved["model"]["heads_share_hidden"] is False
    # the CLI's --method choices come from the registry
    assert cli.main(["train", "--method", "toy_align", "--no-amcl", "--config", str(config_path),
                     "--run-dir", str(tmp_path / "baseline")]) == 0
    assert json.loads((tmp_path / "baseline" / "results.json").read_text())["method"] == "ToyAlign"
    assert "AMCL-ToyAlign" in capsys.readouterr().out


def test_the_toy_round_trips_through_get_config(toy_method):
    from amcl_keras import encoders

    model = toy_method(encoders.small_convnet((8, 8, 1), width=4), num_heads=2, projection_dim=8, hidden_dim=8)
    clone = toy_method.from_config(model.get_config())
    assert (clone.num_heads, clone.projection_dim, type(clone.contrastive_loss)) == (2, 8, AMCLAlignLoss)
    assert isinstance(keras.saving.serialize_keras_object(model), dict)


# the suites that cover "every method" by iterating the registry (tests/methods/helpers.METHODS)
GENERIC_SUITES = ("tests/methods/test_distributed.py", "tests/methods/test_nonfinite_step.py",
                  "tests/methods/test_barlow_twins_simsiam.py", "tests/methods/test_subclassed_encoder.py",
                  "tests/test_config.py", "tests/test_methods_train.py", "tests/test_mixed_precision.py",
                  "tests/test_cli.py", "tests/methods/test_temperature_clipping.py")


def test_the_generic_suites_pick_up_the_toy():
    """Collected as pytest collects them: each generic suite holds test cases of the toy method, and those of the
    two-replica, non-finite-step and training suites run in this session (their ids name toy_align)."""
    completed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", *GENERIC_SUITES],
                               capture_output=True, text=True, timeout=300, cwd=pathlib.Path(__file__).parents[1])
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    collected = [line for line in completed.stdout.splitlines() if "::" in line]
    for suite in GENERIC_SUITES:
        assert any(line.startswith(suite) and "toy_align" in line for line in collected), suite
