"""SimSiam and AMCL-SimSiam (Eq. 2.2): one predictor per head, stop-gradient targets."""

import dataclasses

import keras
import tensorflow as tf

from amcl_keras.config import require
from amcl_keras.constants import NUM_HEADS
from amcl_keras.heads import MultiHeadPredictor, MultiHeadProjector
from amcl_keras.losses import AMCLSimSiamLoss, SimSiamLoss
from amcl_keras.methods.base import ContrastiveTrainer, MethodSettings, StepLoss, temperature_options
from amcl_keras.registry import register_method


@dataclasses.dataclass
class SimSiamSettings(MethodSettings):
    """SimSiam's `model:` settings, with the paper's defaults (docs/METHOD.md §5)."""

    projection_dim: int = 2048
    hidden_dim: int = 2048
    beta: float = 1e-4
    objective: str = AMCLSimSiamLoss.default_objective  # validated best (docs/METHOD.md §10); τ runs to its floor
    temperature_stop_gradient: bool = AMCLSimSiamLoss.default_temperature_stop_gradient  # validated with it
    predictor_hidden_dim: int = 512
    projector_output_bn: bool = True  # heads end in a non-affine batch norm (the authors' and the original paper's)

    def check(self, config):
        super().check(config)
        require(self.predictor_hidden_dim >= 1, "model.predictor_hidden_dim", self.predictor_hidden_dim,
                "it must be a positive integer")

    amcl_caveat = ("AMCL-SimSiam is not reliably better than plain SimSiam: against 1 head, test split, 3 seeds, its "
                   "default (objective 'authors', φ on stopped-gradient inputs) is +1.8 probe / +5.3 kNN points on "
                   "Fashion-MNIST but -4.5 ± 4.5 / +4.4 on the colour set, where 3 plain heads led on validation; "
                   "--heads-only (3 heads, no adaptive τ) is the safer choice there. README 'Reproduction'.")


@register_method("simsiam", "SimSiam", settings=SimSiamSettings, learning_rate=0.05)
@keras.saving.register_keras_serializable(package="amcl_keras")
class SimSiam(ContrastiveTrainer):
    """SimSiam with C heads (3-layer MLPs with batch norm, ending in a non-affine batch norm with
    `projector_output_bn`, as the authors' and the original paper's) and a predictor per head
    (d → predictor_hidden_dim → d, batch norm); the targets z are stop-gradient. With
    `encoder_forward="per_view"` the predictor, like the encoder and heads, sees one view at a time.

    Example:
    ```python
    import amcl_keras as amcl
    encoder = amcl.encoders.small_convnet((28, 28, 1), width=16)
    model = amcl.SimSiam(encoder, num_heads=3, projection_dim=64, hidden_dim=64, predictor_hidden_dim=16)
    ```
    """

    baseline_loss = SimSiamLoss
    amcl_loss = AMCLSimSiamLoss
    config_args = ("num_heads", "projection_dim", "hidden_dim", "predictor_hidden_dim", "projector_output_bn")

    def __init__(
        self, encoder, num_heads=NUM_HEADS, amcl=True, projection_dim=SimSiamSettings.projection_dim,
        hidden_dim=SimSiamSettings.hidden_dim, predictor_hidden_dim=SimSiamSettings.predictor_hidden_dim,
        loss=None, projector_output_bn=SimSiamSettings.projector_output_bn, **kwargs,
    ):
        if loss is None:
            loss = self.default_loss(amcl, projection_dim, SimSiamSettings)
        self.num_heads = num_heads
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.predictor_hidden_dim = predictor_hidden_dim
        self.projector_output_bn = bool(projector_output_bn)
        projector = MultiHeadProjector.batch_norm_mlp(num_heads, hidden_dim, projection_dim, self.projector_output_bn)
        super().__init__(encoder, projector, loss, amcl, **kwargs)

    @classmethod
    def from_model_config(cls, encoder, cfg, global_batch, **kwargs):
        """Build from a `ModelConfig` (the YAML `model:` section)."""
        loss = AMCLSimSiamLoss(cfg.projection_dim, **temperature_options(cfg)) if cfg.amcl else SimSiamLoss()
        return cls(encoder, cfg.num_heads, cfg.amcl, cfg.projection_dim, cfg.hidden_dim, cfg.predictor_hidden_dim,
                   loss=loss, projector_output_bn=cfg.projector_output_bn, encoder_forward=cfg.encoder_forward,
                   **kwargs)

    uses_negatives = False

    def stat_names(self):
        return ("tau_pos",) if self.amcl else ()  # no negatives in SimSiam

    def create_method_state(self):
        self.predictor = MultiHeadPredictor(
            self.num_heads, hidden_dims=(self.predictor_hidden_dim,), output_dim=self.projection_dim,
            batch_norm=True, synchronized_batch_norm=True, name="predictor",
        )

    def build_method_state(self, input_shape, feature_shape):
        self.predictor.build((None, self.num_heads, self.projection_dim))

    def scored_pairs(self, z1, z2):
        """SimSiam compares each view's prediction with the other view's projection."""
        return self.predictor(tf.concat([z1, z2], axis=0), training=False)[: tf.shape(z1)[0]], z2

    def compute_loss_and_stats(self, z1, z2, views):
        p1, p2 = self.through_views(lambda z: self.predictor(z, training=True), z1, z2)
        return StepLoss(*self.contrastive_loss.loss_and_stats(p1, p2, z1, z2))
