"""A toy fifth method, registered when the test session starts (tests/conftest.py imports this module).

"align": pull the two views' embeddings together (BYOL's alignment term without a predictor); AMCL weighs each
pair by 1/τ(z1, z2). It plays "the method file" and "the loss file" of a new method: being registered, it joins
every generic suite that iterates the registry (tests/methods/helpers.METHODS: 2 replicas == 1 device, the
non-finite step, ...) with no other file edited; tests/test_toy_method.py checks that it does and covers the
config, the CLI and serialisation.
"""

import dataclasses

import keras
import tensorflow as tf

from amcl_keras import registry
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

    def __init__(self, projection_dim, beta=1e-3, **kwargs):  # β: AlignSettings' (the config's) default too
        super().__init__(projection_dim, beta, **kwargs)

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
    beta: float = 1e-3  # AMCLAlignLoss's default
    objective: str = AMCLAlignLoss.default_objective  # one default for the loss class and the config
    heads_share_hidden: bool = False  # a setting of the toy's own (unused: it shows the plumbing)

    def check(self, config):
        super().check(config)
        require(not self.heads_share_hidden, "model.heads_share_hidden", self.heads_share_hidden, "false (not built)")


@registry.register_method("toy_align", "ToyAlign", settings=AlignSettings, learning_rate=0.05)
@keras.saving.register_keras_serializable(package="amcl_keras_tests")
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
