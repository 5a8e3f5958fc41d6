"""Barlow Twins' redundancy-reduction loss and its AMCL variant (paper Eqs. 1.3 and 2.3).

Both take the two views' raw head outputs, `[batch, d]` or `[batch, C, d]`, gather the GLOBAL
batch over replicas (so the batch statistics and the cross-correlation cover every replica),
and sum over heads. C is the d×d cross-correlation of the batch-standardised embeddings
(unbiased standard deviation plus 1e-9). Every replica returns the global value.
"""

import keras
import tensorflow as tf

from amcl_keras.constants import TEMPERATURE_HIDDEN_DIM, TEMPERATURE_MAX, TEMPERATURE_MIN
from amcl_keras.losses.adaptive import AdaptiveTemperatureLoss
from amcl_keras.losses.common import EmbeddingLoss, as_heads
from amcl_keras.losses.distributed import gather_global_batch
from amcl_keras.temperature import check_positive_int, omega


def _global_views(z1, z2, dtype):
    z1, z2 = as_heads(z1, "z1", dtype), as_heads(z2, "z2", dtype)
    if z1.shape.is_fully_defined() and z2.shape.is_fully_defined() and z1.shape != z2.shape:
        raise ValueError(f"The two views must have the same shape, got z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)}.")
    (z1, z2), _ = gather_global_batch(z1, z2)
    return tf.transpose(z1, [1, 0, 2]), tf.transpose(z2, [1, 0, 2])  # [C, B, d]


def cross_correlation(z1, z2):
    """`[C, B, d]` views → `[C, d, d]`: standardise over the batch (unbiased std + 1e-9), then aᵀc / B."""
    batch = tf.cast(tf.shape(z1)[1], z1.dtype)

    def standardise(z):
        centred = z - tf.reduce_mean(z, axis=1, keepdims=True)
        std = tf.sqrt(tf.reduce_sum(tf.square(centred), axis=1, keepdims=True) / (batch - 1.0))
        return centred / (std + 1e-9)

    return tf.matmul(standardise(z1), standardise(z2), transpose_a=True) / batch


def _check_lambda(lambda_):
    if not float(lambda_) >= 0.0:
        raise ValueError(f"`lambda_` must be >= 0, got {lambda_!r}. Barlow Twins uses 5e-3.")
    return float(lambda_)


@keras.saving.register_keras_serializable(package="amcl_keras")
class BarlowTwinsLoss(EmbeddingLoss):
    """Σ_l (1 − C_ll)² + λ·Σ_{l≠m} C_lm², summed over heads.

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    value = amcl.losses.BarlowTwinsLoss()(tf.random.normal([32, 16]), tf.random.normal([32, 16]))
    ```
    """

    def __init__(self, lambda_=5e-3, **kwargs):
        super().__init__(**kwargs)
        self.lambda_ = _check_lambda(lambda_)

    def loss_and_stats(self, z1, z2):
        correlation = cross_correlation(*_global_views(z1, z2, self.compute_dtype))
        diagonal = tf.linalg.diag_part(correlation)
        off_diagonal = tf.reduce_sum(tf.square(correlation), axis=[1, 2]) - tf.reduce_sum(tf.square(diagonal), axis=1)
        loss = tf.reduce_sum(tf.reduce_sum(tf.square(1.0 - diagonal), axis=1) + self.lambda_ * off_diagonal)
        return loss, {}

    def get_config(self):
        config = super().get_config()
        config.update(lambda_=self.lambda_)
        return config


@keras.saving.register_keras_serializable(package="amcl_keras")
class AMCLBarlowTwinsLoss(AdaptiveTemperatureLoss):
    """AMCL for Barlow Twins: temperatures over pairs of CHANNELS, per head, summed over heads.

    τ_lm = τ(φ(channel l of view 1), φ(channel m of view 2)) on the batch-wise channel vectors
    (length = the global batch), so φ is R^B → R^B and the global batch size is fixed:
    `batch_size` must equal it (drop the remainder). C is the cross-correlation matrix.
    `objective` (docs/METHOD.md, "Bounded objectives"):

    - `"authors"` (Eq. 2.3): Σ_l (1 − C_ll/τ_ll)² + λ·Σ_{l≠m} C_lm²/τ_lm + β·Σ_l Ω(τ_ll) − β·Σ_{l≠m} Ω(τ_lm);
      the −βΩ term makes it unbounded below as τ_lm → 0.
    - `"rectified"`: the same squared terms (already ≥ 0) with +β·Σ R(τ) on every channel pair.
    - `"normalized"`: Σ_l (1 − w_ll·C_ll)² + λ·Σ_{l≠m} w_lm·C_lm² + β·Σ R(τ), where w = 1/τ normalised
      to mean one over the diagonal and over the off-diagonal pairs separately: the temperatures
      re-weight channel pairs, their overall scale cannot blow the loss up (exactly Barlow Twins
      when all τ are equal).
    Ω(τ) = (d/2)·log τ + 1/τ; R(τ) = (d/2)·[log(τ/c) + c/τ − 1] ≥ 0, d = projection_dim.

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    loss = amcl.losses.AMCLBarlowTwinsLoss(projection_dim=16, batch_size=32)
    value = loss(tf.random.normal([32, 2, 16]), tf.random.normal([32, 2, 16]))
    ```
    """

    def __init__(
        self,
        projection_dim,
        batch_size,
        lambda_=5e-3,
        beta=1e-6,
        temperature_hidden_dim=TEMPERATURE_HIDDEN_DIM,
        temperature_min=TEMPERATURE_MIN,
        temperature_max=TEMPERATURE_MAX,
        objective="authors",
        temperature_center=None,
        **kwargs,
    ):
        check_positive_int("batch_size", batch_size)
        if batch_size < 2:
            raise ValueError(f"`batch_size` must be at least 2 (batch statistics), got {batch_size}.")
        super().__init__(
            projection_dim, beta, temperature_hidden_dim, temperature_min, temperature_max,
            temperature_input_dim=batch_size, objective=objective, temperature_center=temperature_center, **kwargs,
        )
        self.batch_size = batch_size
        self.lambda_ = _check_lambda(lambda_)

    def loss_and_stats(self, z1, z2):
        z1, z2 = _global_views(z1, z2, self.compute_dtype)
        global_batch = z1.shape[1]
        if global_batch is not None and global_batch != self.batch_size:
            raise ValueError(
                f"AMCLBarlowTwinsLoss was built for a global batch of {self.batch_size} (φ maps channel vectors "
                f"of that length) but got a global batch of {global_batch}. Keep the batch fixed "
                "(drop_remainder=True) or build the loss with batch_size equal to your global batch."
            )
        correlation = cross_correlation(z1, z2)
        # φ on the channel vectors: [C, d, B] → τ over channel pairs [C, d, d]
        tau = self.temperature.pairwise(tf.transpose(z1, [0, 2, 1]), tf.transpose(z2, [0, 2, 1]))
        dim = self.projection_dim
        off = 1.0 - tf.eye(dim, dtype=correlation.dtype)
        diagonal, tau_diagonal = tf.linalg.diag_part(correlation), tf.linalg.diag_part(tau)
        if self.objective == "authors":
            positive = tf.reduce_sum(
                tf.square(1.0 - diagonal / tau_diagonal) + self.beta * omega(tau_diagonal, dim), axis=1
            )
            negative = tf.reduce_sum(
                off * (self.lambda_ * tf.square(correlation) / tau - self.beta * omega(tau, dim)), axis=[1, 2]
            )
        else:
            inverse_diagonal, inverse = 1.0 / tau_diagonal, 1.0 / tau
            if self.objective == "normalized":  # mean-one weights on the diagonal and off it
                inverse_diagonal /= tf.reduce_mean(inverse_diagonal, axis=1, keepdims=True)
                inverse /= (tf.reduce_sum(off * inverse, axis=[1, 2]) / float(max(dim * (dim - 1), 1)))[:, None, None]
            positive = tf.reduce_sum(
                tf.square(1.0 - diagonal * inverse_diagonal) + self.regularizer(tau_diagonal), axis=1
            )
            negative = tf.reduce_sum(
                off * (self.lambda_ * tf.square(correlation) * inverse + self.regularizer(tau)), axis=[1, 2]
            )
        loss = tf.reduce_sum(positive + negative)
        return loss, {
            "tau_pos": tf.reduce_mean(tau_diagonal, axis=1),
            "tau_neg": tf.reduce_sum(off * tau, axis=[1, 2]) / float(dim * (dim - 1) or 1),
        }

    def get_config(self):
        config = super().get_config()
        config.update(batch_size=self.batch_size, lambda_=self.lambda_)
        return config
