"""SimSiam's negative-cosine loss and its AMCL variant (paper Eqs. 1.2 and 2.2).

`loss(p1, p2, z1, z2)`: predictions p and projections z of the two views, `[batch, d]` or
`[batch, C, d]`; the z are targets (stop-gradient). Mean over the batch, SUM over heads.
"""

import keras
import tensorflow as tf

from amcl_keras.constants import NON_CONTRASTIVE_OBJECTIVES
from amcl_keras.losses.adaptive import AdaptiveTemperatureLoss
from amcl_keras.losses.common import EmbeddingLoss, as_heads, sum_over_heads
from amcl_keras.losses.distributed import gather_global_batch
from amcl_keras.temperature import bounded_ratio, omega


def _pairs(p1, p2, z1, z2, dtype):
    """Normalised (p1, sg z2) and (p2, sg z1), heads first `[C, b, d]`, cast to `dtype`."""
    def prepare(x, name, stop):
        x = as_heads(x, name, dtype)
        x = tf.stop_gradient(x) if stop else x
        return tf.transpose(tf.math.l2_normalize(x, axis=-1), [1, 0, 2])

    return prepare(p1, "p1", False), prepare(z2, "z2", True), prepare(p2, "p2", False), prepare(z1, "z1", True)


@keras.saving.register_keras_serializable(package="amcl_keras")
class SimSiamLoss(EmbeddingLoss):
    """−½·cos(p1, sg z2) − ½·cos(p2, sg z1), mean over the batch, summed over heads.

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    p1, p2, z1, z2 = (tf.random.normal([8, 16]) for _ in range(4))
    value = amcl.losses.SimSiamLoss()(p1, p2, z1, z2)
    ```
    """

    def loss_and_stats(self, p1, p2, z1, z2):
        a, b, c, d = _pairs(p1, p2, z1, z2, self.compute_dtype)
        per_sample = -0.5 * tf.reduce_sum(a * b, -1) - 0.5 * tf.reduce_sum(c * d, -1)
        loss = sum_over_heads(per_sample)
        return loss, {}


def _global_mean(values):
    """`[C, b]` → `[C, 1]`: the mean over the GLOBAL batch (every replica's rows) per head."""
    (everything,), _ = gather_global_batch(tf.transpose(values))  # [B, C]
    return tf.reduce_mean(everything, axis=0)[:, None]


def mean_one_weights(tau):
    """Inverse temperatures normalised to mean one over the GLOBAL batch: `[C, b]` → `[C, b]`.

    w_i = (1/τ_i) / mean_j(1/τ_j), the mean over every replica's rows, so the mean over replicas
    of each replica's local mean of w·x is the global Σ_i x_i/τ_i / Σ_j 1/τ_j.
    """
    inverse = 1.0 / tau
    return inverse / _global_mean(inverse)


def bounded_weights(tau):
    """The "weighted" objective's weights over the GLOBAL batch: `[C, b]` → `[C, b]`, mean one, in [1/4, 4].

    u_i = bounded_ratio(log(τ̄/τ_i)), τ̄ the geometric mean of τ over the global batch (so u ≈ τ̄/τ_i for
    τ near τ̄, and u ∈ (1/2, 2) always); w_i = u_i / mean_j u_j.
    """
    log_inverse = -tf.math.log(tau)
    ratio = bounded_ratio(log_inverse - _global_mean(log_inverse))
    return ratio / _global_mean(ratio)


@keras.saving.register_keras_serializable(package="amcl_keras")
class AMCLSimSiamLoss(AdaptiveTemperatureLoss):
    """AMCL's SimSiam loss, τ₁ = τ(p1, sg z2), τ₂ = τ(p2, sg z1) from the shared `AdaptiveTemperature`.

    `objective` (docs/METHOD.md, "Bounded objectives"):
    - `"authors"` (Eq. 2.2): −sim(p1, sg z2)/(2τ₁) − sim(p2, sg z1)/(2τ₂) + β·Ω(τ₁) + β·Ω(τ₂),
      mean over the batch; unbounded below (τ → τ_min multiplies the similarity by 1/τ_min).
    - `"normalized"`: −½·w₁·sim(p1, sg z2) − ½·w₂·sim(p2, sg z1) + β·R(τ₁) + β·R(τ₂), where
      w = (1/τ)/mean_batch(1/τ) over the global batch: the temperatures re-weight the pairs but
      cannot scale the loss (similarity part ≥ −1; exactly SimSiam when all τ are equal).
    - `"rectified"`: ½·softplus(−sim₁/τ₁) + ½·softplus(−sim₂/τ₂) + β·R(τ₁) + β·R(τ₂) (≥ 0): the
      negative log-likelihood of a logistic "aligned" classifier with logit sim/τ.
    - `"weighted"`: −½·w₁·sim(p1, sg z2) − ½·w₂·sim(p2, sg z1) + β·R(τ₁) + β·R(τ₂), with the bounded
      weights of `bounded_weights` (mean one over the global batch, each in [1/4, 4], ≈ the normalized
      weights when the temperatures are close): no pair can take over the loss or drop out of it.
    R(τ) = (d/2)·[log(τ/c) + c/τ − 1] ≥ 0, c = `temperature_center` (default 2/d). SUM over heads.

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    p1, p2, z1, z2 = (tf.random.normal([8, 3, 16]) for _ in range(4))
    value = amcl.losses.AMCLSimSiamLoss(projection_dim=16)(p1, p2, z1, z2)
    ```
    """

    objectives = NON_CONTRASTIVE_OBJECTIVES  # not "head_weighted" (Barlow Twins only)
    default_objective = "authors"  # validated for SimSiam (docs/METHOD.md §10); τ runs to its floor
    default_temperature_stop_gradient = True  # φ on stopped-gradient inputs: validated (docs/METHOD.md §10, fifth round)

    def __init__(self, projection_dim, beta=1e-4, **kwargs):  # **kwargs: AdaptiveTemperatureLoss's and a Keras loss's
        super().__init__(projection_dim, beta, **kwargs)

    def loss_and_stats(self, p1, p2, z1, z2):
        a, b, c, d = _pairs(p1, p2, z1, z2, self.compute_dtype)
        self.temperature.check_input_dim(a)
        tau1, tau2 = self.temperature(a, b), self.temperature(c, d)
        sim1, sim2 = tf.reduce_sum(a * b, -1), tf.reduce_sum(c * d, -1)
        if self.objective == "authors":
            dim = self.projection_dim
            per_sample = (
                -sim1 / (2.0 * tau1) - sim2 / (2.0 * tau2) + self.beta * (omega(tau1, dim) + omega(tau2, dim))
            )
        else:
            if self.objective in ("normalized", "weighted"):
                weights = mean_one_weights if self.objective == "normalized" else bounded_weights
                similarity = -0.5 * weights(tau1) * sim1 - 0.5 * weights(tau2) * sim2
            else:
                similarity = 0.5 * tf.nn.softplus(-sim1 / tau1) + 0.5 * tf.nn.softplus(-sim2 / tau2)
            per_sample = similarity + self.regularizer(tau1) + self.regularizer(tau2)
        loss = sum_over_heads(per_sample)
        return loss, {"tau_pos": 0.5 * (tf.reduce_mean(tau1, axis=1) + tf.reduce_mean(tau2, axis=1))}
