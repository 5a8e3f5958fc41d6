"""MoCo's InfoNCE loss against a queue of keys, and its AMCL variant (paper Eqs. 1.1 and 2.1).

`loss(query, key, queue)`: query and key `[batch, C, d]` (or `[batch, d]`), the queue
`[C, M, d]` (or `[M, d]`), one queue per head. Keys and queue are targets: no gradient flows
into them. Mean over the anchors, SUM over heads, in the loss's dtype (float32 unless given).
MoCo calls it once per direction.
"""

import keras
import tensorflow as tf

from amcl_keras.losses.adaptive import (
    AMCLContrastiveLoss, anchor_objective, rectified_anchor_objective, select_negatives,
)
from amcl_keras.losses.common import FixedTemperatureLoss, as_heads, sum_over_heads
from amcl_keras.errors import InvalidInputError


def _queries_keys_queue(query, key, queue, dtype, key_gradient=False):
    """Heads-first, L2-normalised: q, k `[C, b, d]`, queue `[C, M, d]` (queue stop-gradient; key too
    unless `key_gradient`), all cast to `dtype`."""
    query = as_heads(query, "query", dtype)
    key = as_heads(key, "key", dtype)
    key = key if key_gradient else tf.stop_gradient(key)
    queue = tf.stop_gradient(tf.cast(tf.convert_to_tensor(queue), dtype))
    if queue.shape.rank == 2:
        queue = queue[None]
    if queue.shape.rank != 3 or (query.shape[1] is not None and queue.shape[0] != query.shape[1]):
        raise InvalidInputError(
            f"`queue` must have shape [num_heads, queue_size, d] with num_heads = {query.shape[1]}, "
            f"got {tuple(queue.shape)}."
        )
    if query.shape != key.shape:
        raise InvalidInputError(f"`query` and `key` must have the same shape, got {tuple(query.shape)} and {tuple(key.shape)}.")
    normalize = lambda x: tf.math.l2_normalize(x, axis=-1)  # noqa: E731
    return (
        tf.transpose(normalize(query), [1, 0, 2]),
        tf.transpose(normalize(key), [1, 0, 2]),
        normalize(queue),
    )


@keras.saving.register_keras_serializable(package="amcl_keras")
class InfoNCELoss(FixedTemperatureLoss):
    """InfoNCE with one fixed temperature (MoCo): −log softmax of the positive among [k⁺, queue].

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    loss = amcl.losses.InfoNCELoss(temperature=0.1)
    value = loss(tf.random.normal([8, 16]), tf.random.normal([8, 16]), tf.random.normal([64, 16]))
    ```
    """

    default_temperature = 0.1

    def __init__(self, temperature=0.1, **kwargs):
        super().__init__(temperature, **kwargs)

    def loss_and_stats(self, query, key, queue):
        q, k, queue = _queries_keys_queue(query, key, queue, self.compute_dtype)
        positive = tf.reduce_sum(q * k, axis=-1, keepdims=True)  # [C, b, 1]
        logits = tf.concat([positive, tf.matmul(q, queue, transpose_b=True)], axis=-1) / self.temperature
        labels = tf.zeros(tf.shape(logits)[:2], tf.int32)
        per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        loss = sum_over_heads(per_anchor)
        return loss, {}


@keras.saving.register_keras_serializable(package="amcl_keras")
class AMCLInfoNCELoss(AMCLContrastiveLoss):
    """AMCL's MoCo loss: Eq. 2.1 (top-k or hardest) with negatives from the queue, or a bounded form.

    Same options and conventions as `AMCLNTXentLoss`; the negatives of each query are the
    queue's keys of its head. `objective="authors"`: the k most similar by cosine
    (k = min(top_k, queue size)) in the authors' linear form; `"normalized"`: InfoNCE with a
    temperature per pair over the whole queue, −log(exp(q·k/τ⁺) / (exp(q·k/τ⁺) + Σ_j exp(q·u_j/τ_j)))
    + β·[R(τ⁺) + mean_j R(τ_j)]; `"rectified"`: softplus(−q·k/τ⁺) + mean_k softplus(q·u_k/τ_k)
    + β·[R(τ⁺) + mean_k R(τ_k)] over the top-k / hardest keys.

    The queue never gets a gradient; the key neither, unless `key_gradient=True` (the authors'
    dir(k, q): a momentum key as the anchor and the online query as its positive, whose gradient
    flows through the positive pair).

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    loss = amcl.losses.AMCLInfoNCELoss(projection_dim=16, top_k=10)
    value = loss(tf.random.normal([8, 2, 16]), tf.random.normal([8, 2, 16]), tf.random.normal([2, 64, 16]))
    ```
    """

    default_objective = "authors"  # validated for MoCo (docs/METHOD.md §10); τ runs to its floor

    def loss_and_stats(self, query, key, queue, key_gradient=False):
        q, k, queue = _queries_keys_queue(query, key, queue, self.compute_dtype, key_gradient)
        self.temperature.check_input_dim(q)
        phi_query = self.temperature.embed(q)
        tau_positive = self.temperature.from_scores(tf.reduce_sum(phi_query * self.temperature.embed(k), -1))
        similarity = tf.matmul(q, queue, transpose_b=True)  # [C, b, M]
        sim_positive = tf.reduce_sum(q * k, axis=-1)
        if self.objective == "normalized":
            tau = self.temperature.from_scores(tf.matmul(phi_query, self.temperature.embed(queue), transpose_b=True))
            positive_logit = sim_positive / tau_positive
            logits = tf.concat([positive_logit[..., None], similarity / tau], axis=-1)
            per_anchor = (
                tf.reduce_logsumexp(logits, axis=-1) - positive_logit
                + self.regularizer(tau_positive) + tf.reduce_mean(self.regularizer(tau), -1)
            )
            tau_negative = tau
        else:
            queue_size = queue.shape[1] if queue.shape[1] is not None else tf.shape(queue)[1]
            sim_negative, tau_negative = select_negatives(
                similarity, q, queue, self.temperature, self.negatives, self.top_k, queue_size, phi_anchors=phi_query
            )
            if self.objective == "authors":
                per_anchor = anchor_objective(
                    sim_positive, tau_positive, sim_negative, tau_negative,
                    self.beta, self.projection_dim, self.negatives,
                )
            else:
                per_anchor = (
                    rectified_anchor_objective(sim_positive, tau_positive, sim_negative, tau_negative)
                    + self.regularizer(tau_positive) + tf.reduce_mean(self.regularizer(tau_negative), -1)
                )
        loss = sum_over_heads(per_anchor)
        return loss, {
            "tau_pos": tf.reduce_mean(tau_positive, axis=1),
            "tau_neg": tf.reduce_mean(tau_negative, axis=[1, 2]),
        }
