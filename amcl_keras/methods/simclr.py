"""SimCLR (NT-Xent) and AMCL-SimCLR: C heads, per-pair adaptive temperatures (Eq. 2.1)."""

import dataclasses

import keras

from amcl_keras.config import require
from amcl_keras.constants import NUM_HEADS
from amcl_keras.heads import MultiHeadProjector
from amcl_keras.losses import AMCLNTXentLoss, NTXentLoss
from amcl_keras.methods.base import ContrastiveTrainer, MethodSettings, StepLoss, temperature_options
from amcl_keras.registry import register_method


@dataclasses.dataclass
class SimCLRSettings(MethodSettings):
    """SimCLR's `model:` settings: the paper's (docs/METHOD.md §5), except the baseline τ and the AMCL
    objective, validated on two datasets (docs/METHOD.md §10)."""

    projection_dim: int = 128
    hidden_dim: int = 512
    beta: float = 1e-4
    temperature: float = 0.1  # the baseline NT-Xent's fixed τ: validated best of {0.05, 0.1, 0.2, 0.5} (paper: 0.5)
    objective: str = AMCLNTXentLoss.default_objective  # validated best of the AMCL settings (docs/METHOD.md §10)

    def check(self, config):
        super().check(config)
        require(self.temperature > 0, "model.temperature", self.temperature, "it must be > 0 (default 0.1; the paper uses 0.5)")


@register_method("simclr", "SimCLR", settings=SimCLRSettings, learning_rate=0.06)
@keras.saving.register_keras_serializable(package="amcl_keras")
class SimCLR(ContrastiveTrainer):
    """SimCLR with AMCL: `num_heads` projection heads (512 → 512 → 128) and the adaptive-temperature loss.

    `amcl=False, num_heads=1` is plain SimCLR (NT-Xent, τ = 0.1, validated; the paper: 0.5). Loss options go through
    `loss=` (an `AMCLNTXentLoss` or `NTXentLoss`); by default `AMCLNTXentLoss(projection_dim,
    objective="normalized")` (the bounded objective, docs/METHOD.md §9; pass
    `objective="authors"` for the paper's form), or `NTXentLoss(0.1)` (the validated τ) when `amcl=False`.
    Every method builds its default AMCL loss the same way.

    Example:
    ```python
    import keras, amcl_keras as amcl
    encoder = amcl.encoders.small_convnet((28, 28, 1), width=16)
    model = amcl.SimCLR(encoder, num_heads=3, projection_dim=32, hidden_dim=64,
                        loss=amcl.losses.AMCLNTXentLoss(32, top_k=50))
    model.compile(optimizer=keras.optimizers.SGD(0.06, momentum=0.9, global_clipnorm=1.0))
    model.fit(views, epochs=1)     # views: batches of (view1, view2)
    ```
    """

    baseline_loss = NTXentLoss
    amcl_loss = AMCLNTXentLoss
    config_args = ("num_heads", "projection_dim", "hidden_dim")

    def __init__(self, encoder, num_heads=NUM_HEADS, amcl=True, projection_dim=SimCLRSettings.projection_dim,
                 hidden_dim=SimCLRSettings.hidden_dim, loss=None, **kwargs):
        if loss is None:
            loss = self.default_loss(amcl, projection_dim, SimCLRSettings, baseline_args=(SimCLRSettings.temperature,))
        self.num_heads = num_heads
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        projector = MultiHeadProjector(num_heads, hidden_dims=(hidden_dim,), output_dim=projection_dim, name="projector")
        super().__init__(encoder, projector, loss, amcl, **kwargs)

    @classmethod
    def from_model_config(cls, encoder, cfg, global_batch, **kwargs):
        """Build from a `ModelConfig` (the YAML `model:` section)."""
        loss = AMCLNTXentLoss(cfg.projection_dim, **temperature_options(cfg, negatives=True)) if cfg.amcl \
            else NTXentLoss(cfg.temperature)
        return cls(encoder, cfg.num_heads, cfg.amcl, cfg.projection_dim, cfg.hidden_dim, loss=loss,
                   encoder_forward=cfg.encoder_forward, **kwargs)

    def compute_loss_and_stats(self, z1, z2, views):
        return StepLoss(*self.contrastive_loss.loss_and_stats(z1, z2))
