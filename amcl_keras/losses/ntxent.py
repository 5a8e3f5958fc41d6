"""SimCLR's NT-Xent loss and its AMCL variant (docs/METHOD.md, paper Eqs. 1.1 and 2.1).

Both take the two views' raw head outputs, `[batch, d]` (one head) or `[batch, C, d]`
(C heads), L2-normalise them, compute in the loss's dtype (float32 unless given), and use
as negatives of each anchor the other 2B−2 views of the GLOBAL batch (all replicas). The value
is the mean over the local anchors of both views (the two directions averaged) and the SUM over
heads; under a strategy with R replicas, the mean over replicas of the returned values is the
global loss.
"""

import keras
import tensorflow as tf

from amcl_keras.losses.adaptive import (
    AMCLContrastiveLoss, anchor_objective, rectified_anchor_objective, select_negatives,
)
from amcl_keras.losses.common import FixedTemperatureLoss, as_heads, sum_over_heads
from amcl_keras.losses.distributed import gather_global_batch
from amcl_keras.errors import InvalidInputError


class _ContrastivePairs:
    """Anchors, candidates and pair similarities of one SimCLR step, heads first.

    anchors:    [C, 2b, d]  this replica's views (view 1 rows, then view 2 rows), L2-normalised
    partners:   [C, 2b, d]  each anchor's positive (the other view of the same image)
    candidates: [C, 2B, d]  every view of the global batch
    similarity: [C, 2b, 2B] cosine similarity of each anchor with each candidate
    self_mask:     [2b, 2B] True where the candidate is the anchor itself
    negative_mask: [2b, 2B] True where the candidate is a negative of the anchor
    """

    def __init__(self, z1, z2, dtype):
        z1 = as_heads(z1, "z1", dtype)
        z2 = as_heads(z2, "z2", dtype)
        if z1.shape.is_fully_defined() and z2.shape.is_fully_defined() and z1.shape != z2.shape:
            raise InvalidInputError(
                f"The two views must have the same shape, got z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)}."
            )
        z1 = tf.transpose(tf.math.l2_normalize(z1, axis=-1), [1, 0, 2])  # [C, b, d]
        z2 = tf.transpose(tf.math.l2_normalize(z2, axis=-1), [1, 0, 2])
        (g1, g2), offset = gather_global_batch(tf.transpose(z1, [1, 0, 2]), tf.transpose(z2, [1, 0, 2]))
        g1 = tf.transpose(g1, [1, 0, 2])  # [C, B, d]
        g2 = tf.transpose(g2, [1, 0, 2])
        local = tf.shape(z1)[1]
        global_batch = tf.shape(g1)[1]
        self.anchors = tf.concat([z1, z2], axis=1)
        self.partners = tf.concat([z2, z1], axis=1)
        self.candidates = tf.concat([g1, g2], axis=1)
        self.similarity = tf.matmul(self.anchors, self.candidates, transpose_b=True)
        rows = offset + tf.range(local)
        self_index = tf.concat([rows, rows + global_batch], axis=0)  # [2b]
        partner_index = tf.concat([rows + global_batch, rows], axis=0)
        self.partner_index = partner_index
        columns = tf.range(2 * global_batch)[None, :]
        self.self_mask = columns == self_index[:, None]
        self.negative_mask = ~self.self_mask & (columns != partner_index[:, None])
        static = self.candidates.shape[1]  # a Python int when shapes are static (XLA needs a static k)
        self.num_negatives = static - 2 if static is not None else 2 * global_batch - 2


@keras.saving.register_keras_serializable(package="amcl_keras")
class NTXentLoss(FixedTemperatureLoss):
    """NT-Xent (SimCLR, paper Eq. 1.1) with one fixed temperature.

    `loss(z1, z2)` → scalar: mean over the 2·batch anchors, summed over heads if the inputs
    have a heads axis. On identical embeddings it equals log(2N − 1).

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    loss = amcl.losses.NTXentLoss(temperature=0.5)
    value = loss(tf.random.normal([8, 16]), tf.random.normal([8, 16]))
    ```
    """

    default_temperature = 0.5

    def __init__(self, temperature=0.5, **kwargs):
        super().__init__(temperature, **kwargs)

    def loss_and_stats(self, z1, z2):
        pairs = _ContrastivePairs(z1, z2, self.compute_dtype)
        logits = pairs.similarity / self.temperature
        # float32 (or float64) throughout: a large negative constant is safe here (never in float16).
        logits = tf.where(pairs.self_mask, -1e9, logits)
        labels = tf.broadcast_to(pairs.partner_index[None, :], tf.shape(logits)[:2])
        per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        loss = sum_over_heads(per_anchor)
        return loss, {}


@keras.saving.register_keras_serializable(package="amcl_keras")
class AMCLNTXentLoss(AMCLContrastiveLoss):
    """AMCL's SimCLR loss (paper Eq. 2.1, the authors' top-k form, and two bounded forms).

    For each head c and anchor i, with τ from the shared `AdaptiveTemperature` (`.temperature`),
    `objective` chooses how the per-pair temperatures enter (docs/METHOD.md):

    - `"authors"` (the paper and the authors' code; unbounded below):
      −sim⁺/τ⁺ + β·Ω(τ⁺) + [negative term], where `negatives="topk"` (the authors' default) takes
      the k negatives most similar by cosine (k = min(top_k, 2B − 2)), negative term =
      mean_k(sim_k/τ_k) − β·Σ_k(log τ_k + 1/τ_k); `negatives="hardest"` (Eq. 2.1) takes the most
      similar negative n*, negative term = sim_n*/τ_n* − β·Ω(τ_n*). Ω(τ) = (d/2)·log τ + 1/τ.
    - `"normalized"`: NT-Xent with a temperature per pair, over ALL 2B − 2 negatives,
      −log( exp(sim⁺/τ⁺) / (exp(sim⁺/τ⁺) + Σ_n exp(sim_n/τ_n)) ) + β·[R(τ⁺) + mean_n R(τ_n)]
      (≥ 0; equals NT-Xent when every τ is the same constant and β = 0).
    - `"rectified"`: softplus(−sim⁺/τ⁺) + mean_k softplus(sim_k/τ_k) + β·[R(τ⁺) + mean_k R(τ_k)]
      over the same top-k / hardest negatives as "authors" (≥ 0).

    R(τ) = (d/2)·[log(τ/c) + c/τ − 1] ≥ 0 (`temperature_center` c, default 2/d: Ω − min Ω).
    Mean over anchors of both views, SUM over heads, float32 whatever the inputs' dtype
    (unless the loss is given another dtype, e.g. `dtype="float64"`).
    `loss.loss_and_stats(z1, z2)` returns `(loss, stats)`, stats the per-head mean τ⁺ and τ⁻ of the
    negatives used, as `{"tau_pos": [C], "tau_neg": [C]}`.

    Example:
    ```python
    import tensorflow as tf, amcl_keras as amcl
    loss = amcl.losses.AMCLNTXentLoss(projection_dim=16, top_k=5, objective="normalized")
    value = loss(tf.random.normal([8, 3, 16]), tf.random.normal([8, 3, 16]))
    ```
    """

    default_objective = "normalized"  # validated for SimCLR (docs/METHOD.md §10)

    def loss_and_stats(self, z1, z2):
        pairs = _ContrastivePairs(z1, z2, self.compute_dtype)
        self.temperature.check_input_dim(pairs.anchors)
        embed = self.temperature.embed
        phi_anchors = embed(pairs.anchors)  # φ once per sample ...
        tau_positive = self.temperature.from_scores(tf.reduce_sum(phi_anchors * embed(pairs.partners), -1))
        sim_positive = tf.reduce_sum(pairs.anchors * pairs.partners, axis=-1)  # [C, 2b]

        if self.objective == "normalized":
            tau = self.temperature.from_scores(tf.matmul(phi_anchors, embed(pairs.candidates), transpose_b=True))
            per_anchor, tau_negative = self._normalized(pairs, tau, sim_positive, tau_positive)
        else:
            sim_negative, tau_negative = select_negatives(
                pairs.similarity, pairs.anchors, pairs.candidates, self.temperature, self.negatives, self.top_k,
                pairs.num_negatives, pairs.negative_mask, phi_anchors=phi_anchors,
            )
            if self.objective == "authors":
                per_anchor = anchor_objective(
                    sim_positive, tau_positive, sim_negative, tau_negative, self.beta, self.projection_dim,
                    self.negatives,
                )
            else:
                per_anchor = (
                    rectified_anchor_objective(sim_positive, tau_positive, sim_negative, tau_negative)
                    + self.regularizer(tau_positive) + tf.reduce_mean(self.regularizer(tau_negative), -1)
                )
        loss = sum_over_heads(per_anchor)
        stats = {
            "tau_pos": tf.reduce_mean(tau_positive, axis=1),
            "tau_neg": tf.reduce_mean(tau_negative, axis=[1, 2]),
        }
        return loss, stats

    def _normalized(self, pairs, tau, sim_positive, tau_positive):
        """Per-anchor NT-Xent with per-pair τ over all negatives + β·[R(τ⁺) + mean_n R(τ_n)];
        also each anchor's mean negative τ, `[C, 2b, 1]`, for the statistics."""
        # the positive's logit uses τ⁺ computed pair-wise (equal to the partner column of `tau`)
        logits = tf.where(pairs.negative_mask, pairs.similarity / tau, -1e9)  # float32/64: a large constant is safe
        positive_logit = sim_positive / tau_positive
        all_logits = tf.concat([positive_logit[..., None], logits], axis=-1)
        per_anchor = tf.reduce_logsumexp(all_logits, axis=-1) - positive_logit
        negatives = tf.cast(pairs.negative_mask, tau.dtype)
        count = tf.reduce_sum(negatives, axis=-1)  # [2b]
        negative_regularizer = tf.reduce_sum(self.regularizer(tau) * negatives, -1) / count
        per_anchor += self.regularizer(tau_positive) + negative_regularizer
        mean_negative_tau = tf.reduce_sum(tau * negatives, -1, keepdims=True) / count[:, None]  # [C, 2b, 1]
        return per_anchor, mean_negative_tau
