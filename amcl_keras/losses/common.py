"""Pieces every loss uses: the base class, the heads axis, the compute dtype, and the fixed-temperature base."""

import keras
import tensorflow as tf
from amcl_keras.errors import InvalidInputError


def as_heads(z, name, dtype):
    """Cast to `dtype` (the loss's compute dtype) and give a `[batch, C, d]` view its heads axis
    (`[batch, d]` → C = 1)."""
    z = tf.convert_to_tensor(z)
    if z.shape.rank == 2:
        z = z[:, None, :]
    if z.shape.rank != 3:
        raise InvalidInputError(
            f"`{name}` must have shape [batch, d] or [batch, num_heads, d], got shape {tuple(z.shape)}."
        )
    return tf.cast(z, dtype)


def sum_over_heads(per_anchor):
    """`[C, n]` per-anchor values → mean over the anchors, SUM over the heads (AMCL's convention)."""
    return tf.reduce_sum(tf.reduce_mean(per_anchor, axis=1))


class EmbeddingLoss(keras.layers.Layer):
    """Base of every loss: pure in the embeddings, computed in float32 unless a dtype is given
    (e.g. `dtype="float64"`: every op, φ included, in float64; the inputs are cast to it).

    One return type per entry point: `loss(*embeddings)` gives the scalar loss;
    `loss.loss_and_stats(*embeddings)` gives `(scalar, stats)`, `stats` a dict of per-head `[C]`
    tensors (the AMCL losses' mean τ⁺ / τ⁻; empty for the baselines). Subclasses implement
    `loss_and_stats`.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if self.compute_dtype not in ("float32", "float64"):
            raise InvalidInputError(
                f"{type(self).__name__} computes in float32 (or float64), got dtype {self.compute_dtype!r}: its masks use "
                "large finite constants that overflow in half precision. Leave `dtype` unset under mixed precision "
                "(the losses cast the heads' float16/bfloat16 outputs to float32 themselves)."
            )

    def build(self, *args, **kwargs):  # no input-dependent weights (φ's are created in __init__)
        self.built = True

    def call(self, *embeddings, **options):
        return self.loss_and_stats(*embeddings, **options)[0]

    def loss_and_stats(self, *embeddings, **options):
        raise NotImplementedError


class FixedTemperatureLoss(EmbeddingLoss):
    """Base of the baselines with one fixed temperature τ (NT-Xent, InfoNCE)."""

    default_temperature = 0.5

    def __init__(self, temperature=None, **kwargs):
        super().__init__(**kwargs)
        temperature = self.default_temperature if temperature is None else temperature
        if not float(temperature) > 0.0:
            raise InvalidInputError(
                f"`temperature` must be > 0, got {temperature!r}. "
                f"{type(self).__name__} usually uses {self.default_temperature}."
            )
        self.temperature = float(temperature)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config
