"""SimCLR (NT-Xent) and AMCL-SimCLR: C heads, per-pair adaptive temperatures (Eq. 2.1)."""

import keras

from amcl_keras.heads import MultiHeadProjector
from amcl_keras.losses import AMCLNTXentLoss, NTXentLoss
from amcl_keras.methods.base import ContrastiveTrainer


@keras.saving.register_keras_serializable(package="amcl_keras")
class SimCLR(ContrastiveTrainer):
    """SimCLR with AMCL: `num_heads` projection heads and the adaptive-temperature loss.

    `amcl=False, num_heads=1` is plain SimCLR (NT-Xent, τ = 0.5). Loss options go through
    `loss=` (an `AMCLNTXentLoss` or `NTXentLoss`); by default `AMCLNTXentLoss(projection_dim)`
    with the authors' settings, or `NTXentLoss(0.5)` when `amcl=False`.

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

    def __init__(self, encoder, num_heads=3, amcl=True, projection_dim=128, hidden_dim=512, loss=None, **kwargs):
        if loss is None:
            loss = AMCLNTXentLoss(projection_dim) if amcl else NTXentLoss(0.5)
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not isinstance(loss, (AMCLNTXentLoss, NTXentLoss)):
            raise TypeError(f"SimCLR's `loss` must be an AMCLNTXentLoss or NTXentLoss, got {type(loss).__name__}.")
        if isinstance(loss, AMCLNTXentLoss) != bool(amcl):
            raise ValueError(
                f"amcl={amcl} contradicts loss={type(loss).__name__}: pass an AMCLNTXentLoss with amcl=True, "
                "or an NTXentLoss with amcl=False."
            )
        if isinstance(loss, AMCLNTXentLoss) and loss.projection_dim != projection_dim:
            raise ValueError(
                f"The loss was built for projection_dim={loss.projection_dim} but the heads output "
                f"projection_dim={projection_dim}; make them equal."
            )
        projector = MultiHeadProjector(num_heads, hidden_dims=(hidden_dim,), output_dim=projection_dim, name="projector")
        self.num_heads = num_heads
        self.amcl = bool(amcl)
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.contrastive_loss = loss
        super().__init__(encoder, projector, **kwargs)

    def stat_names(self):
        return ("tau_pos", "tau_neg") if self.amcl else ()

    def compute_loss_and_stats(self, z1, z2):
        return self.contrastive_loss(z1, z2, return_stats=True)

    def get_config(self):
        return {
            "name": self.name,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "num_heads": self.num_heads,
            "amcl": self.amcl,
            "projection_dim": self.projection_dim,
            "hidden_dim": self.hidden_dim,
            "loss": keras.saving.serialize_keras_object(self.contrastive_loss),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)
