"""Barlow Twins and AMCL-Barlow Twins (Eq. 2.3: temperatures over channel pairs)."""

import dataclasses

import keras
import tensorflow as tf

from amcl_keras.config import require
from amcl_keras.constants import NUM_HEADS
from amcl_keras.heads import MultiHeadProjector
from amcl_keras.losses import AMCLBarlowTwinsLoss, BarlowTwinsLoss
from amcl_keras.losses.barlow_twins import cross_correlation
from amcl_keras.methods.base import ContrastiveTrainer, MethodSettings, StepLoss, _split_pairs, temperature_options
from amcl_keras.registry import register_method
from amcl_keras.errors import InvalidInputError


@dataclasses.dataclass
class BarlowTwinsSettings(MethodSettings):
    """Barlow Twins' `model:` settings, with the paper's defaults (docs/METHOD.md §5)."""

    projection_dim: int = 2048
    hidden_dim: int = 2048
    beta: float = 1e-6
    objective: str = AMCLBarlowTwinsLoss.default_objective  # the least harmful on validation (docs/METHOD.md §10)
    temperature_stop_gradient: bool = AMCLBarlowTwinsLoss.default_temperature_stop_gradient
    # φ's gradient (its regulariser over d² channel pairs) is ~100× the encoder's: clipped together, the encoder's
    # step shrank ~100× (docs/METHOD.md §10); validated with the objective above
    temperature_clipping: str = "separate"
    lambda_: float = 5e-3  # the off-diagonal weight
    projector_output_bn: bool = True  # heads end in a non-affine batch norm (the authors' and the original paper's)

    def check(self, config):
        super().check(config)
        require(self.lambda_ >= 0, "model.lambda_", self.lambda_, "it must be >= 0 (Barlow Twins uses 5e-3)")

    amcl_caveat = ("AMCL-Barlow Twins is no better than plain Barlow Twins: against 1 head, test split, 3 seeds, "
                   "probe / kNN -0.3 / +0.4 points on Fashion-MNIST and +0.0 / -3.8 on colour (kNN spread 7.9); on "
                   "validation it was below 3 plain heads (-0.3 / -2.0 score). --no-amcl or --heads-only do as well. "
                   "README 'Reproduction'.")


@register_method("barlow_twins", "Barlow Twins", settings=BarlowTwinsSettings, learning_rate=0.11)
@keras.saving.register_keras_serializable(package="amcl_keras")
class BarlowTwins(ContrastiveTrainer):
    """Barlow Twins with C heads (3-layer MLPs with batch norm, 2048 wide by default, ending in a
    non-affine batch norm with `projector_output_bn`, as the authors' and the original paper's:
    for AMCL, φ then sees standardised channel vectors).

    AMCL's temperature network acts on batch-wise channel vectors, so AMCL needs the fixed
    GLOBAL `batch_size` (all replicas together); a different batch is refused with both sizes
    named. Head batch norm is synchronized across replicas, so a multi-replica step equals
    one device on the global batch.

    Example:
    ```python
    import amcl_keras as amcl
    encoder = amcl.encoders.small_convnet((28, 28, 1), width=16)
    model = amcl.BarlowTwins(encoder, num_heads=3, projection_dim=64, hidden_dim=64, batch_size=256)
    ```
    """

    baseline_loss = BarlowTwinsLoss
    amcl_loss = AMCLBarlowTwinsLoss
    config_args = ("num_heads", "projection_dim", "hidden_dim", "batch_size", "projector_output_bn")

    def __init__(
        self, encoder, num_heads=NUM_HEADS, amcl=True, projection_dim=BarlowTwinsSettings.projection_dim,
        hidden_dim=BarlowTwinsSettings.hidden_dim, batch_size=None, loss=None,
        projector_output_bn=BarlowTwinsSettings.projector_output_bn,
        temperature_clipping=BarlowTwinsSettings.temperature_clipping, **kwargs
    ):
        if loss is None:
            if amcl and batch_size is None:
                raise InvalidInputError(
                    "AMCL Barlow Twins needs the fixed global batch size: pass batch_size=<global batch> "
                    "(the temperature network maps channel vectors of that length), or amcl=False."
                )
            lambda_ = BarlowTwinsSettings.lambda_
            loss = self.default_loss(amcl, projection_dim, BarlowTwinsSettings, (batch_size, lambda_), (lambda_,))
        self.num_heads = num_heads
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.batch_size = getattr(loss, "batch_size", batch_size)
        self.projector_output_bn = bool(projector_output_bn)
        projector = MultiHeadProjector.batch_norm_mlp(num_heads, hidden_dim, projection_dim, self.projector_output_bn)
        super().__init__(encoder, projector, loss, amcl, temperature_clipping=temperature_clipping, **kwargs)

    @classmethod
    def from_model_config(cls, encoder, cfg, global_batch, **kwargs):
        """Build from a `ModelConfig` (the YAML `model:` section); AMCL uses the fixed global batch."""
        loss = AMCLBarlowTwinsLoss(
            cfg.projection_dim, global_batch, lambda_=cfg.lambda_, **temperature_options(cfg)
        ) if cfg.amcl else BarlowTwinsLoss(cfg.lambda_)
        return cls(
            encoder, cfg.num_heads, cfg.amcl, cfg.projection_dim, cfg.hidden_dim, global_batch, loss=loss,
            projector_output_bn=cfg.projector_output_bn, encoder_forward=cfg.encoder_forward, **kwargs
        )

    def compute_loss_and_stats(self, z1, z2, views):
        return StepLoss(*self.contrastive_loss.loss_and_stats(z1, z2))

    def pair_statistics(self, view1, view2):
        """Barlow Twins' pairs are channels: `sim_pos` is the diagonal of each head's cross-correlation
        matrix (a channel with itself across the views), `sim_neg` its off-diagonal entries; with AMCL,
        `tau_*` are φ's temperatures of the same channel pairs (φ on the batch-wise channel vectors)."""
        batch = tf.shape(view1)[0]
        z = self.projector(self.encoder(tf.concat([view1, view2], axis=0), training=False), training=False)
        z = tf.cast(z, tf.float32)
        z1, z2 = tf.transpose(z[:batch], [1, 0, 2]), tf.transpose(z[batch:], [1, 0, 2])  # [C, B, d]
        pairs = {"sim": cross_correlation(z1, z2)}
        if self.amcl:
            pairs["tau"] = self.contrastive_loss.temperature.pairwise(
                tf.transpose(z1, [0, 2, 1]), tf.transpose(z2, [0, 2, 1])
            )
        return _split_pairs(pairs, tf.logical_not(tf.eye(self.projection_dim, dtype=tf.bool)))
