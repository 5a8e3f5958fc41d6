"""The AMCL per-anchor objective shared by the SimCLR and MoCo losses (paper Eq. 2.1 / Eq. 5)."""

import keras
import tensorflow as tf

from amcl_keras.constants import (  # noqa: F401 (DEFAULT_OBJECTIVE, NEGATIVE_FORMS, OBJECTIVES re-exported)
    CONTRASTIVE_OBJECTIVES, DEFAULT_OBJECTIVE, NEGATIVE_FORMS, OBJECTIVES, TEMPERATURE_HIDDEN_DIM, TEMPERATURE_MAX,
    TEMPERATURE_MIN, TOP_K,
)
from amcl_keras.losses.common import EmbeddingLoss
from amcl_keras.temperature import AdaptiveTemperature, bounded_omega, check_positive_int, omega
from amcl_keras.errors import InvalidInputError



def check_objective(objective, allowed=OBJECTIVES, loss_name="this loss"):
    if objective not in allowed:
        unsupported = f" ({objective!r} exists, but not for {loss_name})" if objective in OBJECTIVES else ""
        raise InvalidInputError(
            f"`objective` must be one of {allowed} ('authors': the paper's form, unbounded below; the others: "
            f"bounded forms, see docs/METHOD.md §9), got {objective!r}{unsupported}."
        )


def check_negatives(negatives):
    if negatives not in NEGATIVE_FORMS:
        raise InvalidInputError(
            f"`negatives` must be one of {NEGATIVE_FORMS} ('topk': the authors' top-k form; "
            f"'hardest': paper Eq. 2.1), got {negatives!r}."
        )


def select_negatives(similarity, anchors, candidates, temperature, negatives, top_k, num_negatives,
                     negative_mask=None, phi_anchors=None):
    """The negatives each anchor uses — the k most similar by COSINE (not by sim/τ) — with their sim and τ.

    similarity `[C, n, m]`: cosine of every anchor with every candidate (ranked without its gradient);
    anchors `[C, n, d]`, candidates `[C, m, d]` (L2-normalised); `temperature`: the shared
    `AdaptiveTemperature` (`phi_anchors`: φ(anchors) when already computed); `negative_mask`
    (broadcastable, True = a negative) excludes the others. k = 1 for "hardest", else
    min(top_k, num_negatives) (a Python int when shapes are static, as XLA needs).

    τ is computed for the k chosen pairs only (the objective uses no other). Two equal ways, picked by
    size: with few candidates (m ≤ k·d) the φ-scores of all m are one matmul, then k are read off;
    with many (a long MoCo queue: m = 65,536 ≫ k·d = 12,800) the k chosen candidates are gathered and
    their similarity and φ-score recomputed from them, so no `[C, n, m]` τ matrix exists (at B = 4,096
    that cut AMCL-MoCo's loss from 14.5 s / 13 GB to 3.5 s / 3.6 GB; `benchmarks/loss_scaling.py`).
    Values and gradients equal those of full similarity and τ matrices. Returns `(sim [C, n, k], τ [C, n, k])`.
    """
    if negatives == "hardest":
        k = 1
    elif isinstance(num_negatives, int):
        k = min(top_k, num_negatives)
    else:
        k = tf.minimum(top_k, num_negatives)
    ranked = tf.stop_gradient(similarity)
    if negative_mask is not None:
        ranked = tf.where(negative_mask, ranked, -3.0)  # cosine ≥ −1
    _, index = tf.math.top_k(ranked, k=k)  # [C, n, k]
    phi_anchors = temperature.embed(anchors) if phi_anchors is None else phi_anchors
    rows, columns, dim = anchors.shape[1], candidates.shape[1], anchors.shape[-1]
    many = isinstance(k, int) and None not in (rows, columns, dim) and columns > k * dim
    if not many:
        scores = tf.matmul(phi_anchors, temperature.embed(candidates), transpose_b=True)  # [C, n, m]
        chosen_scores = tf.gather(scores, index, batch_dims=2)
        return tf.gather(similarity, index, batch_dims=2), temperature.from_scores(chosen_scores)
    chosen = tf.gather(candidates, index, batch_dims=1)  # [C, n, k, d]
    if rows * k < columns:
        phi_chosen = temperature.embed(chosen)  # fewer rows through φ than all the candidates
    else:
        phi_chosen = tf.gather(temperature.embed(candidates), index, batch_dims=1)
    chosen_scores = tf.einsum("cnd,cnkd->cnk", phi_anchors, phi_chosen)
    return tf.einsum("cnd,cnkd->cnk", anchors, chosen), temperature.from_scores(chosen_scores)


def anchor_objective(sim_positive, tau_positive, sim_negative, tau_negative, beta, dim, negatives):
    """Per-anchor AMCL value: −sim⁺/τ⁺ + β·Ω(τ⁺) + the negative term.

    "hardest": + sim_n*/τ_n* − β·Ω(τ_n*);  "topk": + mean_k(sim_k/τ_k) − β·Σ_k(log τ_k + 1/τ_k).
    """
    value = -sim_positive / tau_positive + beta * omega(tau_positive, dim)
    if negatives == "hardest":
        sim_n, tau_n = sim_negative[..., 0], tau_negative[..., 0]
        return value + sim_n / tau_n - beta * omega(tau_n, dim)
    value += tf.reduce_mean(sim_negative / tau_negative, axis=-1)
    return value - beta * tf.reduce_sum(tf.math.log(tau_negative) + 1.0 / tau_negative, axis=-1)


def rectified_anchor_objective(sim_positive, tau_positive, sim_negative, tau_negative):
    """Per-anchor similarity part of the "rectified" objective (≥ 0):

        softplus(−sim⁺/τ⁺) + mean_k softplus(sim_k/τ_k)

    each of the authors' linear terms −sim⁺/τ⁺ and +sim_k/τ_k passed through softplus, i.e. the
    negative log-likelihood of a logistic "is this pair positive?" classifier with logit sim/τ.
    """
    return tf.nn.softplus(-sim_positive / tau_positive) + tf.reduce_mean(tf.nn.softplus(sim_negative / tau_negative), -1)


class AdaptiveTemperatureLoss(EmbeddingLoss):
    """Base of every AMCL loss: owns β and the one `AdaptiveTemperature` all heads share.

    `temperature_stop_gradient`: φ sees its inputs without their gradient (`AdaptiveTemperature(stop_gradient=)`).
    `temperature_input_dim` is φ's input size when it differs from `projection_dim`
    (Barlow Twins: φ acts on batch-wise channel vectors, so it is the batch size).
    Computes in float32 unless a dtype is given. `objectives`: the values of `objective` the loss implements.
    """

    objectives = OBJECTIVES
    # `objective=None` means this: each subclass sets the default its method was validated with (docs/METHOD.md
    # §10), so a loss built from Python and `amcl train` agree (tests/losses/test_defaults.py checks it).
    default_objective = "authors"
    default_temperature_stop_gradient = False  # `temperature_stop_gradient=None` means this (validated per method too)

    def __init__(
        self,
        projection_dim,
        beta,
        temperature_hidden_dim=TEMPERATURE_HIDDEN_DIM,
        temperature_min=TEMPERATURE_MIN,
        temperature_max=TEMPERATURE_MAX,
        temperature_input_dim=None,
        objective=None,
        temperature_center=None,
        temperature_stop_gradient=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("projection_dim", projection_dim)
        objective = self.default_objective if objective is None else objective
        if temperature_stop_gradient is None:
            temperature_stop_gradient = self.default_temperature_stop_gradient
        check_objective(objective, self.objectives, type(self).__name__)
        if temperature_center is not None and not float(temperature_center) > 0.0:
            raise InvalidInputError(
                f"`temperature_center` must be > 0 or None (None: 2/projection_dim, the minimum of the authors' Ω), "
                f"got {temperature_center!r}."
            )
        self.objective = objective
        self.temperature_center = None if temperature_center is None else float(temperature_center)
        if not float(beta) >= 0.0:
            raise InvalidInputError(f"`beta` must be >= 0, got {beta!r}. The authors use 1e-4 (1e-6 for Barlow Twins).")
        self.projection_dim = projection_dim
        self.beta = float(beta)
        self.temperature = AdaptiveTemperature(
            temperature_input_dim or projection_dim,
            hidden_dim=temperature_hidden_dim,
            temperature_min=temperature_min,
            temperature_max=temperature_max,
            stop_gradient=temperature_stop_gradient,
            dtype=self.dtype_policy,
            name="adaptive_temperature",
        )

    def regularizer(self, tau):
        """β·R_c(τ) elementwise, the bounded objectives' regulariser (≥ 0, minimum at τ = c)."""
        return self.beta * bounded_omega(tau, self.projection_dim, self.temperature_center)

    def get_config(self):
        config = super().get_config()
        config.update(
            objective=self.objective,
            temperature_center=self.temperature_center,
            projection_dim=self.projection_dim,
            beta=self.beta,
            temperature_hidden_dim=self.temperature.hidden_dim,
            temperature_min=self.temperature.temperature_min,
            temperature_max=self.temperature.temperature_max,
            temperature_stop_gradient=self.temperature.stop_gradient,
        )
        return config


class AMCLContrastiveLoss(AdaptiveTemperatureLoss):
    """Base of the AMCL losses with negatives (SimCLR, MoCo): adds `negatives` and `top_k`."""

    objectives = CONTRASTIVE_OBJECTIVES

    def __init__(self, projection_dim, beta=1e-4, negatives="topk", top_k=TOP_K, **kwargs):
        """`**kwargs`: `AdaptiveTemperatureLoss`'s (temperature_hidden_dim, temperature_min, temperature_max,
        objective, temperature_center, temperature_stop_gradient) and a Keras loss's."""
        super().__init__(projection_dim, beta, **kwargs)
        check_negatives(negatives)
        check_positive_int("top_k", top_k)
        self.negatives = negatives
        self.top_k = top_k

    def get_config(self):
        config = super().get_config()
        config.update(negatives=self.negatives, top_k=self.top_k)
        return config
