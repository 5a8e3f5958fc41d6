"""Barlow Twins' redundancy-reduction loss and its AMCL variant (paper Eqs. 1.3 and 2.3).

Both take the two views' raw head outputs, `[batch, d]` or `[batch, C, d]`, gather the GLOBAL
batch over replicas (so the batch statistics and the cross-correlation cover every replica),
and sum over heads. C is the d×d cross-correlation of the batch-standardised embeddings
(unbiased standard deviation plus 1e-9). Every replica returns the global value.
"""

import keras
import tensorflow as tf

from amcl_keras.losses.adaptive import AdaptiveTemperatureLoss
from amcl_keras.losses.common import EmbeddingLoss, as_heads
from amcl_keras.losses.distributed import gather_global_batch
from amcl_keras.temperature import bounded_omega, bounded_ratio, check_positive_int, omega
from amcl_keras.errors import InvalidInputError


def _global_views(z1, z2, dtype):
    z1, z2 = as_heads(z1, "z1", dtype), as_heads(z2, "z2", dtype)
    if z1.shape.is_fully_defined() and z2.shape.is_fully_defined() and z1.shape != z2.shape:
        raise InvalidInputError(f"The two views must have the same shape, got z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)}.")
    (z1, z2), _ = gather_global_batch(z1, z2)
    return tf.transpose(z1, [1, 0, 2]), tf.transpose(z2, [1, 0, 2])  # [C, B, d]


def _standardise(z):
    """`[C, B, d]` → centred over the batch and divided by the unbiased std + 1e-9."""
    batch = tf.cast(tf.shape(z)[1], z.dtype)
    centred = z - tf.reduce_mean(z, axis=1, keepdims=True)
    std = tf.sqrt(tf.reduce_sum(tf.square(centred), axis=1, keepdims=True) / (batch - 1.0))
    return centred / (std + 1e-9)


def cross_correlation(z1, z2):
    """`[C, B, d]` views → `[C, d, d]`: standardise over the batch (unbiased std + 1e-9), then aᵀc / B."""
    batch = tf.cast(tf.shape(z1)[1], z1.dtype)
    return tf.matmul(_standardise(z1), _standardise(z2), transpose_a=True) / batch


def _channel_pair_sums(product, scores, options):
    """The `[C, d, d]` part of AMCL Barlow Twins, reduced to `[C, d]` per channel l (rows):

    diag C, diag τ, and sums over the off-diagonal m ≠ l of the terms the objective needs — authors:
    λ·C²/τ − β·Ω(τ); rectified: λ·C²/τ + β·R(τ); normalized: C²/τ, 1/τ and β·R(τ) separately (the mean
    of 1/τ only rescales the first, so it needs no second pass); weighted: u·C², u and β·R(τ), u the
    bounded ratio of τ to the geometric mean of the head's off-diagonal τ (its mean rescales the
    first, as for normalized); head_weighted: −log τ summed over ALL m (for each head's geometric-mean τ), C² and
    β·R(τ); always τ (for the mean τ⁻).
    `product` = B·C (C the cross-correlation), `scores` = φ(a)·φ(b); `options` = (objective, B, λ, β,
    d, τ_min, τ_max, c), Python values. Elementwise work plus row sums, which XLA compiles into a few
    fused loops (instead of ~40 TensorFlow kernels, each a pass over C·d² entries, forward and backward).
    The rows are summed outside XLA: its CPU reduction of d² float32 values in one loop loses ~1e-4
    relative at d = 2048; TensorFlow's, like XLA's row sums of d values, stays at round-off.
    """
    objective, batch, lambda_, beta, dim, t_min, t_max, center = options
    correlation = product / batch
    tau = t_min + (t_max - t_min) * tf.sigmoid(-scores)
    index = tf.range(dim)
    off = index[:, None] != index[None, :]  # compared iotas inside the fusion, no d×d mask in memory
    zero = tf.zeros((), tau.dtype)

    def rows(term):
        return tf.reduce_sum(tf.where(off, term, zero), axis=2)

    square_over_tau = tf.square(correlation) / tau
    if objective == "authors":
        sums = [rows(lambda_ * square_over_tau - beta * omega(tau, dim))]
    elif objective == "rectified":
        sums = [rows(lambda_ * square_over_tau + beta * bounded_omega(tau, dim, center))]
    elif objective == "weighted":
        log_inverse = -tf.math.log(tau)
        pairs = float(dim * (dim - 1) or 1)
        mean_log_inverse = tf.reduce_sum(rows(log_inverse), axis=1) / pairs  # row sums first: see above
        ratio = bounded_ratio(log_inverse - mean_log_inverse[:, None, None])
        sums = [rows(ratio * tf.square(correlation)), rows(ratio), rows(beta * bounded_omega(tau, dim, center))]
    elif objective == "head_weighted":  # Σ_m −log τ over ALL pairs (each head's mean), then the plain terms
        sums = [tf.reduce_sum(-tf.math.log(tau), axis=2), rows(tf.square(correlation)),
                rows(beta * bounded_omega(tau, dim, center))]
    else:
        sums = [rows(square_over_tau), rows(1.0 / tau), rows(beta * bounded_omega(tau, dim, center))]
    return [tf.linalg.diag_part(correlation), tf.linalg.diag_part(tau), rows(tau)] + sums


_pair_sums_forward = tf.function(_channel_pair_sums, jit_compile=True, autograph=False)


@tf.function(jit_compile=True, autograph=False)
def _pair_sums_backward(product, scores, upstream, options):
    """∂(Σ upstream · sums)/∂(product, scores), the forward recomputed inside the same XLA cluster (cheaper
    than handing `[C, d, d]` intermediates from the forward to the backward through memory)."""
    with tf.GradientTape() as tape:
        tape.watch([product, scores])
        sums = _channel_pair_sums(product, scores, options)
    return tape.gradient(sums, [product, scores], output_gradients=list(upstream))


def _fused_pair_sums(product, scores, options):
    """`_channel_pair_sums`, XLA-compiled forward and backward. A custom gradient: the backward needs
    only the two inputs, so the forward hands back no `[C, d, d]` intermediates."""

    @tf.custom_gradient
    def pair_sums(product, scores):
        outputs = _pair_sums_forward(product, scores, options)

        def gradient(*upstream):
            upstream = [tf.zeros_like(o) if u is None else u for u, o in zip(upstream, outputs)]
            return _pair_sums_backward(product, scores, upstream, options)

        return outputs, gradient

    return pair_sums(product, scores)


# None: not decided yet. The fused path needs XLA; a TensorFlow build or device without it (or `use_fused_xla(False)`)
# takes the plain path: the same function, differentiated by TensorFlow, keeping its [C, d, d] intermediates.
_FUSED_XLA = {"enabled": None}
_XLA_UNAVAILABLE = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError,
                    tf.errors.NotFoundError)


def use_fused_xla(enabled=None):
    """Choose how AMCL-Barlow Twins computes its channel-pair terms: True the XLA-fused kernels, False plain
    TensorFlow (equal results, more memory and time), None (the default) XLA where it compiles, found by compiling
    a tiny case once. Returns the choice in effect."""
    _FUSED_XLA["enabled"] = enabled
    return _fused_xla_enabled()


def _fused_xla_enabled():
    if _FUSED_XLA["enabled"] is None:
        # eagerly, also when first asked while a tf.function is traced: the probe must compile and run now (its
        # error caught here), not become float32 ops inside the caller's graph
        with tf.init_scope():
            try:
                tiny = tf.zeros([1, 2, 2])
                _pair_sums_forward(tiny, tiny, ("normalized", 2.0, 1.0, 0.0, 2, 0.1, 1.0, None))
                _FUSED_XLA["enabled"] = True
            except _XLA_UNAVAILABLE:
                _FUSED_XLA["enabled"] = False
    return _FUSED_XLA["enabled"]


def channel_pair_sums(product, scores, options):
    """`_channel_pair_sums`, XLA-fused where XLA is available (`use_fused_xla`), else in plain TensorFlow."""
    if _fused_xla_enabled():
        return _fused_pair_sums(product, scores, options)
    return _channel_pair_sums(product, scores, options)


def _check_lambda(lambda_):
    if not float(lambda_) >= 0.0:
        raise InvalidInputError(f"`lambda_` must be >= 0, got {lambda_!r}. Barlow Twins uses 5e-3.")
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
    - `"weighted"`: Σ_l w_ll·(1 − C_ll)² + λ·Σ_{l≠m} w_lm·C_lm² + β·Σ R(τ): every term keeps Barlow Twins'
      form and target (C = I is still the minimum), times a weight w from its temperature — the
      bounded ratio 2^tanh(log(τ̄/τ)/ln 2) to the geometric mean τ̄, normalised to mean one over the
      diagonal and over the off-diagonal separately, so each w ∈ [1/4, 4].
    - `"head_weighted"`: Σ_c w_c·[Σ_l (1 − C_ll)² + λ·Σ_{l≠m} C_lm²] + β·Σ R(τ): one weight per HEAD, the
      bounded ratio of the heads' geometric-mean τ̄ to head c's geometric-mean temperature (over all its
      channel pairs), normalised to mean one over the heads; inside a head every term is Barlow Twins'
      own (one head: exactly Barlow Twins plus the regulariser).
    Ω(τ) = (d/2)·log τ + 1/τ; R(τ) = (d/2)·[log(τ/c) + c/τ − 1] ≥ 0, d = projection_dim.

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    loss = amcl.losses.AMCLBarlowTwinsLoss(projection_dim=16, batch_size=32)
    value = loss(tf.random.normal([32, 2, 16]), tf.random.normal([32, 2, 16]))
    ```
    """

    # the least harmful AMCL setting on validation for Barlow Twins (docs/METHOD.md §10); still below the baseline
    default_objective = "weighted"
    default_temperature_stop_gradient = True

    def __init__(self, projection_dim, batch_size, lambda_=5e-3, beta=1e-6, **kwargs):
        """`**kwargs`: `AdaptiveTemperatureLoss`'s (temperature_hidden_dim, temperature_min, temperature_max,
        objective, temperature_center, temperature_stop_gradient) and a Keras loss's."""
        check_positive_int("batch_size", batch_size)
        if batch_size < 2:
            raise InvalidInputError(f"`batch_size` must be at least 2 (batch statistics), got {batch_size}.")
        super().__init__(projection_dim, beta, temperature_input_dim=batch_size, **kwargs)
        self.batch_size = batch_size
        self.lambda_ = _check_lambda(lambda_)

    def loss_and_stats(self, z1, z2):
        z1, z2 = _global_views(z1, z2, self.compute_dtype)
        global_batch = z1.shape[1]
        if global_batch is not None and global_batch != self.batch_size:
            raise InvalidInputError(
                f"AMCLBarlowTwinsLoss was built for a global batch of {self.batch_size} (φ maps channel vectors "
                f"of that length) but got a global batch of {global_batch}. Keep the batch fixed "
                "(drop_remainder=True) or build the loss with batch_size equal to your global batch."
            )
        # The two [C, d, d] products go through TensorFlow's (oneDNN) matmul; everything after them, elementwise
        # over C·d² entries forward and backward, is one XLA-fused pass each way (`_channel_pair_sums`).
        product = tf.matmul(_standardise(z1), _standardise(z2), transpose_a=True)  # B·C, C the cross-correlation
        # φ on the channel vectors: [C, d, B] → pair scores r = φ(a)·φ(b) over channel pairs [C, d, d]
        phi = self.temperature
        scores = tf.matmul(phi.embed(tf.transpose(z1, [0, 2, 1])), phi.embed(tf.transpose(z2, [0, 2, 1])), transpose_b=True)
        dim = self.projection_dim
        options = (self.objective, float(self.batch_size), self.lambda_, self.beta, dim,
                   phi.temperature_min, phi.temperature_max, self.temperature_center)
        diagonal, tau_diagonal, tau_rows, *sums = channel_pair_sums(product, scores, options)
        pairs = float(dim * (dim - 1) or 1)  # off-diagonal channel pairs
        if self.objective == "authors":
            positive = tf.square(1.0 - diagonal / tau_diagonal) + self.beta * omega(tau_diagonal, dim)
            negative = tf.reduce_sum(sums[0], axis=1)
        elif self.objective == "head_weighted":
            log_inverse_rows, squares, regularizer = (tf.reduce_sum(rows, axis=1) for rows in sums)
            log_inverse = log_inverse_rows / float(dim * dim)  # [C]: −log of each head's geometric-mean τ
            ratio = bounded_ratio(log_inverse - tf.reduce_mean(log_inverse))
            weight = ratio / tf.reduce_mean(ratio)  # [C], mean one over the heads, each in [1/4, 4]
            positive = weight[:, None] * tf.square(1.0 - diagonal) + self.regularizer(tau_diagonal)
            negative = weight * self.lambda_ * squares + regularizer
        elif self.objective == "weighted":
            log_inverse = -tf.math.log(tau_diagonal)
            ratio = bounded_ratio(log_inverse - tf.reduce_mean(log_inverse, axis=1, keepdims=True))
            weight = ratio / tf.reduce_mean(ratio, axis=1, keepdims=True)
            positive = weight * tf.square(1.0 - diagonal) + self.regularizer(tau_diagonal)
            weighted_squares, ratio_sums, regularizer = (tf.reduce_sum(rows, axis=1) for rows in sums)
            negative = self.lambda_ * tf.math.divide_no_nan(weighted_squares, ratio_sums / pairs) + regularizer
        else:
            inverse_diagonal = 1.0 / tau_diagonal
            if self.objective == "normalized":  # mean-one weights on the diagonal and off it
                inverse_diagonal /= tf.reduce_mean(inverse_diagonal, axis=1, keepdims=True)
                square_over_tau, inverse, regularizer = (tf.reduce_sum(rows, axis=1) for rows in sums)
                # λ·Σ C²/τ / mean(1/τ): the same as normalising 1/τ first, in one pass (0 when d = 1: no pairs)
                negative = self.lambda_ * tf.math.divide_no_nan(square_over_tau, inverse / pairs) + regularizer
            else:
                negative = tf.reduce_sum(sums[0], axis=1)
            positive = tf.square(1.0 - diagonal * inverse_diagonal) + self.regularizer(tau_diagonal)
        loss = tf.reduce_sum(tf.reduce_sum(positive, axis=1) + negative)
        return loss, {"tau_pos": tf.reduce_mean(tau_diagonal, axis=1), "tau_neg": tf.reduce_sum(tau_rows, axis=1) / pairs}

    def get_config(self):
        config = super().get_config()
        config.update(batch_size=self.batch_size, lambda_=self.lambda_)
        return config
