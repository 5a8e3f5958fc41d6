"""Swapping the two views leaves the two-view losses unchanged (docs/METHOD.md §4: "the two-view
losses are symmetric").

Why it holds, loss by loss:
- NT-Xent / AMCL NT-Xent: the anchors are the rows of both views and each anchor's candidates the
  whole global batch; swapping the views only permutes the anchors (and the candidates), so the
  mean over anchors is the same. φ's score φ(a)·φ(b) is symmetric, so τ(a, b) = τ(b, a), and the
  top-k negatives are chosen by cosine, which is symmetric too.
- Barlow Twins / AMCL Barlow Twins: C(z2, z1) = C(z1, z2)ᵀ and τ(z2, z1) = τ(z1, z2)ᵀ (channel l of
  view 2 against channel m of view 1 is the same pair as (m, l) before): the diagonal is the same
  and the off-diagonal terms are the same set, so every objective (and both means of the
  "normalized" weights) is unchanged.
- SimSiam: loss(p1, p2, z1, z2) = loss(p2, p1, z2, z1) swaps its two terms.
The values are float32 (the default dtype): equal up to float32 round-off of sums taken in
another order.
"""

import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import AdaptiveTemperature
from amcl_keras.losses import (
    AMCLBarlowTwinsLoss, AMCLInfoNCELoss, AMCLNTXentLoss, AMCLSimSiamLoss, BarlowTwinsLoss, NTXentLoss, SimSiamLoss,
)

BATCH, HEADS, DIM = 5, 2, 8
RTOL, ATOL = 1e-5, 1e-6
OBJECTIVES = ["authors", "normalized", "rectified"]
AMCL = dict(beta=0.05, temperature_hidden_dim=8)


def _views(count, shape=(BATCH, HEADS, DIM), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for _ in range(count)]


def _assert_same(forward, backward):
    (value, stats), (swapped_value, swapped_stats) = forward, backward
    np.testing.assert_allclose(float(swapped_value), float(value), rtol=RTOL, atol=ATOL)
    assert set(stats) == set(swapped_stats)
    for name in stats:
        assert stats[name].shape == (HEADS,)
        np.testing.assert_allclose(swapped_stats[name].numpy(), stats[name].numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


def test_ntxent_is_symmetric():
    z1, z2 = _views(2)
    loss = NTXentLoss(0.5)
    _assert_same(loss.loss_and_stats(z1, z2), loss.loss_and_stats(z2, z1))


@pytest.mark.parametrize("negatives", ["topk", "hardest"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_amcl_ntxent_is_symmetric(objective, negatives):
    z1, z2 = _views(2)
    loss = AMCLNTXentLoss(DIM, negatives=negatives, top_k=3, objective=objective, **AMCL)
    forward = loss.loss_and_stats(z1, z2)
    assert set(forward[1]) == {"tau_pos", "tau_neg"}
    _assert_same(forward, loss.loss_and_stats(z2, z1))


def test_barlow_twins_is_symmetric():
    z1, z2 = _views(2, (6, HEADS, DIM))
    loss = BarlowTwinsLoss(lambda_=0.1)
    _assert_same(loss.loss_and_stats(z1, z2), loss.loss_and_stats(z2, z1))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_amcl_barlow_twins_is_symmetric(objective):
    z1, z2 = _views(2, (6, HEADS, DIM))
    loss = AMCLBarlowTwinsLoss(DIM, 6, lambda_=0.1, objective=objective, **AMCL)
    forward = loss.loss_and_stats(z1, z2)
    assert set(forward[1]) == {"tau_pos", "tau_neg"}
    _assert_same(forward, loss.loss_and_stats(z2, z1))


def test_simsiam_is_symmetric():
    p1, p2, z1, z2 = _views(4)
    loss = SimSiamLoss()
    _assert_same(loss.loss_and_stats(p1, p2, z1, z2), loss.loss_and_stats(p2, p1, z2, z1))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_amcl_simsiam_is_symmetric(objective):
    p1, p2, z1, z2 = _views(4)
    loss = AMCLSimSiamLoss(DIM, objective=objective, **AMCL)
    forward = loss.loss_and_stats(p1, p2, z1, z2)
    assert set(forward[1]) == {"tau_pos"}
    _assert_same(forward, loss.loss_and_stats(p2, p1, z2, z1))


def test_the_adaptive_temperature_is_symmetric_in_its_pair():
    """The reason the AMCL losses are: τ(a, b) = τ(b, a), and pairwise(b, a) = pairwise(a, b)ᵀ."""
    a, b = (tf.math.l2_normalize(x, -1) for x in _views(2, (HEADS, BATCH, DIM)))
    temperature = AdaptiveTemperature(DIM, hidden_dim=8)
    np.testing.assert_allclose(temperature(b, a).numpy(), temperature(a, b).numpy(), rtol=RTOL)
    np.testing.assert_allclose(
        temperature.pairwise(b, a).numpy(), np.swapaxes(temperature.pairwise(a, b).numpy(), -1, -2), rtol=RTOL
    )
    assert np.ptp(temperature.pairwise(a, b).numpy()) > 1e-3  # not a constant τ


@pytest.mark.parametrize(
    "name",
    ["ntxent_other_pairing", "barlow_other_channels", "simsiam_other_targets", "infonce_query_key"],
)
def test_exchanges_that_are_not_symmetries_change_the_loss(name):
    """The comparisons above can fail: exchanges that are not symmetries of a loss change its value
    by far more than the tolerance (MoCo's AMCL InfoNCE is one-directional by construction: the
    negatives are the query's against the queue, so loss(q, k, queue) ≠ loss(k, q, queue); the
    MoCo method averages both directions itself)."""
    if name == "ntxent_other_pairing":  # positives re-paired: view 2's rows rolled by one
        z1, z2 = _views(2)
        loss = AMCLNTXentLoss(DIM, top_k=3, objective="normalized", **AMCL)
        values = loss(z1, z2), loss(z1, np.roll(z2, 1, axis=0))
    elif name == "barlow_other_channels":  # the channels of view 2 permuted: another diagonal
        z1, z2 = _views(2, (6, HEADS, DIM))
        loss = AMCLBarlowTwinsLoss(DIM, 6, lambda_=0.1, objective="normalized", **AMCL)
        values = loss(z1, z2), loss(z1, np.roll(z2, 1, axis=-1))
    elif name == "simsiam_other_targets":  # predictions swapped, targets not: p1 against sg z1
        p1, p2, z1, z2 = _views(4)
        loss = AMCLSimSiamLoss(DIM, objective="rectified", **AMCL)
        values = loss(p1, p2, z1, z2), loss(p2, p1, z1, z2)
    else:
        query, key = _views(2)
        (queue,) = _views(1, (HEADS, 7, DIM), seed=1)
        for objective in OBJECTIVES:
            loss = AMCLInfoNCELoss(DIM, top_k=3, objective=objective, **AMCL)
            forward, backward = float(loss(query, key, queue)), float(loss(key, query, queue))
            assert abs(forward - backward) > 100 * RTOL * abs(forward), objective
        return
    forward, backward = (float(v) for v in values)
    assert abs(forward - backward) > 100 * RTOL * abs(forward)
