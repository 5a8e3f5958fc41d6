"""A new method costs four files: the method file, its loss file, a YAML and a test file.

This test module plays all four for a toy method ("align": pull the two views' embeddings
together, BYOL's alignment term without a predictor; AMCL weighs each pair by 1/τ(z1, z2)). It
registers the method from here, then the config, the CLI and the run's labels pick it up without
any change to the package. The fixture unregisters it afterwards.
"""

import dataclasses
import json

import keras
import pytest
import tensorflow as tf
import yaml

from amcl_keras import cli, config as config_lib, registry
from amcl_keras.config import require
from amcl_keras.heads import MultiHeadProjector
from amcl_keras.losses.adaptive import AdaptiveTemperatureLoss
from amcl_keras.losses.common import EmbeddingLoss, as_heads, sum_over_heads
from amcl_keras.methods.base import ContrastiveTrainer, MethodSettings, StepLoss, temperature_options


# --- "the loss file" ------------------------------------------------------------------------------
def _cosine(loss, z1, z2):
    z1, z2 = (tf.math.l2_normalize(as_heads(z, name, loss.compute_dtype), -1) for z, name in ((z1, "z1"), (z2, "z2")))
    return z1, z2, tf.transpose(tf.reduce_sum(z1 * z2, -1))  # [C, b]


@keras.saving.register_keras_serializable(package="amcl_keras_tests")
class AlignLoss(EmbeddingLoss):
    """2 − 2·cos(z1, z2), mean over the batch, summed over heads."""

    def loss_and_stats(self, z1, z2):
        return sum_over_heads(2.0 - 2.0 * _cosine(self, z1, z2)[2]), {}


@keras.saving.register_keras_serializable(package="amcl_keras_tests")
class AMCLAlignLoss(AdaptiveTemperatureLoss):
    """(2 − 2·cos)/τ(z1, z2) + β·R(τ) per pair, τ from the shared φ."""

    def loss_and_stats(self, z1, z2):
        z1, z2, cosine = _cosine(self, z1, z2)
        embed = self.temperature.embed
        tau = tf.transpose(self.temperature.from_scores(tf.reduce_sum(embed(z1) * embed(z2), -1)))  # [C, b]
        loss = sum_over_heads((2.0 - 2.0 * cosine) / tau + self.regularizer(tau))
        return loss, {"tau_pos": tf.reduce_mean(tau, axis=1)}


# --- "the method file" ----------------------------------------------------------------------------
@dataclasses.dataclass
class AlignSettings(MethodSettings):
    projection_dim: int = 16
    hidden_dim: int = 32
    beta: float = 1e-3
    heads_share_hidden: bool = False  # a setting of the toy's own (unused: it shows the plumbing)

    def check(self, config):
        super().check(config)
        require(not self.heads_share_hidden, "model.heads_share_hidden", self.heads_share_hidden, "false (not built)")


def _define_method():
    @registry.register_method("toy_align", "ToyAlign", settings=AlignSettings, learning_rate=0.05)
    class ToyAlign(ContrastiveTrainer):
        baseline_loss, amcl_loss = AlignLoss, AMCLAlignLoss
        config_args = ("num_heads", "projection_dim", "hidden_dim")

        def __init__(self, encoder, num_heads=3, amcl=True, projection_dim=AlignSettings.projection_dim,
                     hidden_dim=AlignSettings.hidden_dim, loss=None, **kwargs):
            loss = loss or (AMCLAlignLoss(projection_dim, AlignSettings.beta) if amcl else AlignLoss())
            self.num_heads, self.projection_dim, self.hidden_dim = num_heads, projection_dim, hidden_dim
            projector = MultiHeadProjector(num_heads, hidden_dims=(hidden_dim,), output_dim=projection_dim)
            super().__init__(encoder, projector, loss, amcl, **kwargs)

        @classmethod
        def from_model_config(cls, encoder, cfg, global_batch, **kwargs):
            loss = AMCLAlignLoss(cfg.projection_dim, **temperature_options(cfg)) if cfg.amcl else AlignLoss()
            return cls(encoder, cfg.num_heads, cfg.amcl, cfg.projection_dim, cfg.hidden_dim, loss=loss,
                       encoder_forward=cfg.encoder_forward, **kwargs)

        uses_negatives = False

        def stat_names(self):
            return ("tau_pos",) if self.amcl else ()

        def compute_loss_and_stats(self, z1, z2, views):
            return StepLoss(*self.contrastive_loss.loss_and_stats(z1, z2))

    return ToyAlign


@pytest.fixture
def toy_method():
    model = _define_method()
    yield model
    registry.METHODS.pop("toy_align")


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
