"""SimSiam's negative-cosine loss and its AMCL variant (paper Eqs. 1.2 and 2.2).

`loss(p1, p2, z1, z2)`: predictions p and projections z of the two views, `[batch, d]` or
`[batch, C, d]`; the z are targets (stop-gradient). Mean over the batch, SUM over heads.
"""

import keras
import tensorflow as tf

from amcl_keras.losses.adaptive import AdaptiveTemperatureLoss
from amcl_keras.losses.common import as_heads, sum_over_heads
from amcl_keras.temperature import omega


def _pairs(p1, p2, z1, z2):
    """Normalised (p1, sg z2) and (p2, sg z1), heads first `[C, b, d]`."""
    def prepare(x, name, stop):
        x = as_heads(x, name)
        x = tf.stop_gradient(x) if stop else x
        return tf.transpose(tf.math.l2_normalize(x, axis=-1), [1, 0, 2])

    return prepare(p1, "p1", False), prepare(z2, "z2", True), prepare(p2, "p2", False), prepare(z1, "z1", True)


@keras.saving.register_keras_serializable(package="amcl_keras")
class SimSiamLoss(keras.layers.Layer):
    """−½·cos(p1, sg z2) − ½·cos(p2, sg z1), mean over the batch, summed over heads.

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    p1, p2, z1, z2 = (tf.random.normal([8, 16]) for _ in range(4))
    value = amcl.losses.SimSiamLoss()(p1, p2, z1, z2)
    ```
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, p1, p2, z1, z2, return_stats=False):
        a, b, c, d = _pairs(p1, p2, z1, z2)
        per_sample = -0.5 * tf.reduce_sum(a * b, -1) - 0.5 * tf.reduce_sum(c * d, -1)
        loss = sum_over_heads(per_sample)
        return (loss, {}) if return_stats else loss


@keras.saving.register_keras_serializable(package="amcl_keras")
class AMCLSimSiamLoss(AdaptiveTemperatureLoss):
    """AMCL Eq. 2.2: Σ_c [−sim(p1, sg z2)/(2τ₁) − sim(p2, sg z1)/(2τ₂) + β·Ω(τ₁) + β·Ω(τ₂)],
    τ₁ = τ(p1, sg z2), τ₂ = τ(p2, sg z1) from the shared `AdaptiveTemperature`; mean over the batch.

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    p1, p2, z1, z2 = (tf.random.normal([8, 3, 16]) for _ in range(4))
    value = amcl.losses.AMCLSimSiamLoss(projection_dim=16)(p1, p2, z1, z2)
    ```
    """

    def __init__(self, projection_dim, beta=1e-4, temperature_hidden_dim=128, temperature_min=1e-5,
                 temperature_max=2.0, **kwargs):
        super().__init__(projection_dim, beta, temperature_hidden_dim, temperature_min, temperature_max, **kwargs)

    def call(self, p1, p2, z1, z2, return_stats=False):
        a, b, c, d = _pairs(p1, p2, z1, z2)
        self.temperature._check_last_dim(a)
        tau1, tau2 = self.temperature(a, b), self.temperature(c, d)
        dim = self.projection_dim
        per_sample = (
            -tf.reduce_sum(a * b, -1) / (2.0 * tau1)
            - tf.reduce_sum(c * d, -1) / (2.0 * tau2)
            + self.beta * (omega(tau1, dim) + omega(tau2, dim))
        )
        loss = sum_over_heads(per_sample)
        if not return_stats:
            return loss
        return loss, {"tau_pos": 0.5 * (tf.reduce_mean(tau1, axis=1) + tf.reduce_mean(tau2, axis=1))}
