"""The bounded AMCL objectives ("normalized", "rectified"; "weighted" for SimSiam and Barlow Twins) of every method against NumPy
references written pair by pair from their definitions (tests/reference.py), plus the analytic
facts that make them what they claim: bounded below, the baseline when every τ is equal, and
the authors' regulariser recovered by R with its default centre."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from amcl_keras.losses import (
    AMCLBarlowTwinsLoss, AMCLInfoNCELoss, AMCLNTXentLoss, AMCLSimSiamLoss, BarlowTwinsLoss, InfoNCELoss, NTXentLoss,
    SimSiamLoss,
)
from amcl_keras.temperature import bounded_omega, omega
from tests import reference

BOUNDED = ["normalized", "rectified"]
NON_CONTRASTIVE_BOUNDED = BOUNDED + ["weighted"]  # SimSiam and Barlow Twins also have the "weighted" form
BARLOW_BOUNDED = NON_CONTRASTIVE_BOUNDED + ["head_weighted"]  # and Barlow Twins one weight per head


def _constant_temperature(loss):
    """φ's output layer zeroed: every pair scores 0, so τ = τ_min + (τ_max − τ_min)/2 for all pairs."""
    w1, b1, w2, b2 = loss.temperature.get_weights()
    loss.temperature.set_weights([w1, b1, np.zeros_like(w2), np.zeros_like(b2)])
    return loss.temperature.temperature_min + 0.5 * (loss.temperature.temperature_max - loss.temperature.temperature_min)


def _steep(loss, scale=50.0):
    """φ scaled up so that most pair scores are large: temperatures pushed towards both bounds."""
    loss.temperature.set_weights([w * scale for w in loss.temperature.get_weights()])


@pytest.mark.parametrize("objective", BOUNDED)
@pytest.mark.parametrize("negatives", ["topk", "hardest"])
@pytest.mark.parametrize("batch,heads,dim,top_k", [(2, 1, 4, 100), (5, 3, 8, 3), (8, 2, 16, 100)])
def test_ntxent_bounded_matches_numpy(rng, objective, negatives, batch, heads, dim, top_k):
    z1, z2 = (rng.normal(size=(batch, heads, dim)).astype("float32") for _ in range(2))
    loss = AMCLNTXentLoss(dim, beta=0.05, negatives=negatives, top_k=top_k, temperature_hidden_dim=16,
                          objective=objective, temperature_center=0.3)
    expected = reference.amcl_ntxent_bounded(z1, z2, loss.temperature.get_weights(), 0.05, objective, negatives,
                                             top_k, center=0.3)
    np.testing.assert_allclose(float(loss(z1, z2)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", BOUNDED)
@pytest.mark.parametrize("negatives", ["topk", "hardest"])
def test_infonce_bounded_matches_numpy(rng, objective, negatives):
    query, key = (rng.normal(size=(6, 2, 8)).astype("float32") for _ in range(2))
    queue = rng.normal(size=(2, 20, 8)).astype("float32")
    loss = AMCLInfoNCELoss(8, beta=0.05, negatives=negatives, top_k=5, temperature_hidden_dim=16, objective=objective)
    expected = reference.amcl_infonce_bounded(query, key, queue, loss.temperature.get_weights(), 0.05, objective,
                                              negatives, 5)
    np.testing.assert_allclose(float(loss(query, key, queue)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", NON_CONTRASTIVE_BOUNDED)
def test_simsiam_bounded_matches_numpy(rng, objective):
    p1, p2, z1, z2 = (rng.normal(size=(7, 3, 8)).astype("float32") for _ in range(4))
    loss = AMCLSimSiamLoss(8, beta=0.05, temperature_hidden_dim=16, objective=objective, temperature_center=0.5)
    expected = reference.simsiam_bounded(p1, p2, z1, z2, loss.temperature.get_weights(), 0.05, objective, center=0.5)
    np.testing.assert_allclose(float(loss(p1, p2, z1, z2)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", BARLOW_BOUNDED)
def test_barlow_twins_bounded_matches_numpy(rng, objective):
    z1, z2 = (rng.normal(size=(10, 3, 6)).astype("float32") for _ in range(2))
    loss = AMCLBarlowTwinsLoss(6, 10, beta=0.01, temperature_hidden_dim=8, objective=objective, temperature_min=0.05)
    expected = reference.barlow_twins_bounded(z1, z2, loss.temperature.get_weights(), 0.01, 5e-3, objective,
                                              t_min=0.05)
    np.testing.assert_allclose(float(loss(z1, z2)), expected, rtol=1e-5, atol=1e-5)


def test_regulariser_is_the_authors_omega_shifted_to_zero_at_its_minimum():
    tau = tf.constant([1e-5, 1e-3, 2.0 / 128, 0.1, 2.0])
    minimum = float(omega(tf.constant(2.0 / 128), 128))
    np.testing.assert_allclose(bounded_omega(tau, 128).numpy(), omega(tau, 128).numpy() - minimum, rtol=1e-5)
    centred = bounded_omega(tf.constant([0.01, 0.5, 1.5]), 128, center=0.5).numpy()
    assert centred[1] == pytest.approx(0.0, abs=1e-6) and (centred > -1e-6).all()


# --- equal temperatures and β = 0: the "normalized" forms are exactly the baselines -------------


def test_normalized_ntxent_with_equal_temperatures_is_ntxent(rng):
    z1, z2 = (rng.normal(size=(6, 2, 8)).astype("float32") for _ in range(2))
    loss = AMCLNTXentLoss(8, beta=0.0, objective="normalized", temperature_min=0.2, temperature_max=0.8)
    tau = _constant_temperature(loss)
    np.testing.assert_allclose(float(loss(z1, z2)), float(NTXentLoss(tau)(z1, z2)), rtol=1e-5)


def test_normalized_infonce_with_equal_temperatures_is_infonce(rng):
    query, key = (rng.normal(size=(6, 2, 8)).astype("float32") for _ in range(2))
    queue = rng.normal(size=(2, 16, 8)).astype("float32")
    loss = AMCLInfoNCELoss(8, beta=0.0, objective="normalized", temperature_min=0.05, temperature_max=0.15)
    tau = _constant_temperature(loss)
    np.testing.assert_allclose(float(loss(query, key, queue)), float(InfoNCELoss(tau)(query, key, queue)), rtol=1e-5)


@pytest.mark.parametrize("objective", ["normalized", "weighted"])
def test_normalized_and_weighted_simsiam_and_barlow_twins_with_equal_temperatures_are_the_baselines(rng, objective):
    p1, p2, z1, z2 = (rng.normal(size=(6, 2, 8)).astype("float32") for _ in range(4))
    simsiam = AMCLSimSiamLoss(8, beta=0.0, objective=objective)
    _constant_temperature(simsiam)
    np.testing.assert_allclose(float(simsiam(p1, p2, z1, z2)), float(SimSiamLoss()(p1, p2, z1, z2)), rtol=1e-5)
    barlow = AMCLBarlowTwinsLoss(8, 6, beta=0.0, objective=objective)
    _constant_temperature(barlow)
    np.testing.assert_allclose(float(barlow(z1, z2)), float(BarlowTwinsLoss()(z1, z2)), rtol=1e-5)


# --- bounded below where the authors' form is not ---------------------------------------------------


def _aligned_views(rng, batch=8, heads=2, dim=16):
    """Two views whose positives are almost identical: the authors' form rewards τ⁺ → τ_min."""
    z1 = rng.normal(size=(batch, heads, dim)).astype("float32")
    return z1, z1 + 0.01 * rng.normal(size=z1.shape).astype("float32")


def test_authors_form_runs_unbounded_as_phi_steepens_while_the_bounded_forms_stay_at_or_above_zero(rng):
    z1, z2 = _aligned_views(rng)
    values = {}
    for objective in ["authors", *BOUNDED]:
        loss = AMCLNTXentLoss(16, beta=1e-4, top_k=5, objective=objective)
        # φ ≡ a constant large score: every τ sits at τ_min (the collapsed state)
        w1, b1, w2, b2 = loss.temperature.get_weights()
        loss.temperature.set_weights([w1, np.zeros_like(b1), np.zeros_like(w2), np.full_like(b2, 10.0)])
        values[objective] = float(loss(z1, z2))
    assert values["authors"] < -1e4  # ≈ 1e5·(top-k negative cosine − positive cosine) per head
    for objective in BOUNDED:
        assert values[objective] >= 0.0


@pytest.mark.parametrize("objective", BOUNDED)
def test_bounded_objectives_are_never_negative_for_random_phi(rng, objective):
    for trial in range(5):
        z1, z2 = _aligned_views(rng)
        for loss in (AMCLNTXentLoss(16, beta=1e-4, top_k=5, objective=objective),
                     AMCLInfoNCELoss(16, beta=1e-4, top_k=5, objective=objective)):
            _steep(loss, scale=3.0 + 10 * trial)
            args = (z1, z2) if isinstance(loss, AMCLNTXentLoss) else (z1, z2, rng.normal(size=(2, 32, 16)))
            assert float(loss(*args)) >= 0.0
        barlow = AMCLBarlowTwinsLoss(16, 8, beta=1e-6, objective=objective)
        _steep(barlow, scale=3.0 + 10 * trial)
        assert float(barlow(z1, z2)) >= 0.0
        simsiam = AMCLSimSiamLoss(16, beta=1e-4, objective=objective)
        _steep(simsiam, scale=3.0 + 10 * trial)
        # SimSiam's similarity part is ≥ −1 per head ("normalized") or ≥ 0 ("rectified"), R ≥ 0
        assert float(simsiam(z1, z1, z2, z2)) >= (-2.0 if objective == "normalized" else 0.0)


@pytest.mark.parametrize("objective", BOUNDED)
def test_bounded_forms_hold_the_temperatures_off_the_floor(objective):
    """The derivative argument, measured: on aligned positives, gradient descent on φ alone drives
    the authors' τ⁺ to τ_min, while the bounded forms' regulariser holds it above (docs/METHOD.md)."""
    rng = np.random.default_rng(3)
    z1, z2 = _aligned_views(rng, batch=16, heads=1, dim=16)
    results = {}
    for form in ("authors", objective):
        loss = AMCLNTXentLoss(16, beta=1e-4, top_k=5, objective=form, temperature_hidden_dim=16)
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9, global_clipnorm=1.0)
        for _ in range(60):
            with tf.GradientTape() as tape:
                value = loss(z1, z2)
            gradients = tape.gradient(value, loss.trainable_variables)
            optimizer.apply(gradients, loss.trainable_variables)
        _, stats = loss.loss_and_stats(z1, z2)
        results[form] = float(stats["tau_pos"][0])
    assert results["authors"] < 1e-3  # collapsing to τ_min = 1e-5
    assert results[objective] > 10 * results["authors"]


@pytest.mark.parametrize("objective", ["authors", *BOUNDED])
def test_key_gradient_flows_through_the_positive_only_when_asked(rng, objective):
    """MoCo's dir(k, q): the key is the anchor's positive and may receive the gradient; the
    gradient then equals a central finite difference of the loss's value in the key."""
    query = tf.constant(rng.normal(size=(4, 2, 8)), tf.float32)
    key = tf.Variable(rng.normal(size=(4, 2, 8)).astype("float32"))
    queue = tf.constant(rng.normal(size=(2, 16, 8)), tf.float32)
    loss = AMCLInfoNCELoss(8, beta=0.05, top_k=4, temperature_min=0.05, objective=objective)
    with tf.GradientTape(persistent=True) as tape:
        stopped = loss(query, key, queue)
        flowing = loss(query, key, queue, key_gradient=True)
    assert tape.gradient(stopped, key) is None
    gradient = tape.gradient(flowing, key).numpy()
    assert float(flowing) == pytest.approx(float(stopped))
    base = key.numpy()
    for index in [(0, 0, 0), (1, 1, 3), (3, 0, 7)]:
        step = np.zeros_like(base)
        step[index] = 1e-2
        up = float(loss(query, base + step, queue))
        down = float(loss(query, base - step, queue))
        assert gradient[index] == pytest.approx((up - down) / 2e-2, rel=2e-2, abs=2e-3)


def test_weighted_weights_are_mean_one_and_bounded_however_steep_phi_is(rng):
    """The "weighted" form's promise, measured on the weights the loss uses: mean one, each in [1/4, 4], even
    where φ is steep enough that the normalized weights put almost all the mass on a few pairs."""
    from amcl_keras.losses.simsiam import bounded_weights, mean_one_weights

    tau = tf.constant(np.exp(rng.uniform(np.log(1e-5), np.log(2.0), size=(3, 64))), tf.float32)
    weights = bounded_weights(tau).numpy()
    np.testing.assert_allclose(weights.mean(axis=1), 1.0, rtol=1e-5)
    assert weights.min() >= 0.25 and weights.max() <= 4.0
    assert mean_one_weights(tau).numpy().max() > 10.0  # what "normalized" does with the same temperatures
    np.testing.assert_allclose(weights, np.stack([reference.weighted_weights(t) for t in tau.numpy()]), rtol=1e-5)


def test_weighted_barlow_twins_keeps_the_identity_as_its_minimum(rng):
    """Decorrelated channels give C = (B−1)/B·I (unbiased std, 1/B normaliser): every diagonal term is 1/B² and
    every off-diagonal term 0, so Barlow Twins is d/B² — and so is its weighted form for ANY φ, because the
    weights only re-weight terms (mean one over the diagonal). Normalized's (1 − w·C_ll)² moves the target.
    View 2 is view 1 with each channel scaled and shifted: the same C, but channel vectors φ tells apart."""
    centred = rng.normal(size=(64, 16))
    centred -= centred.mean(axis=0)
    channels = np.linalg.qr(centred)[0].astype("float32")  # orthonormal, still zero-mean columns
    shifted = (channels * rng.uniform(0.5, 3.0, size=16) + rng.normal(size=16)).astype("float32")
    for objective, expect_baseline in (("weighted", True), ("head_weighted", True), ("normalized", False)):
        loss = AMCLBarlowTwinsLoss(16, 64, beta=0.0, objective=objective)
        value = float(loss(channels, shifted))
        assert np.isclose(value, 16 / 64**2, rtol=1e-3) == expect_baseline, (objective, value)


def test_head_weighted_barlow_twins_weights_whole_heads_with_mean_one_bounded_weights(rng):
    """One head: the weight is 1, so the loss is plain Barlow Twins plus the regulariser (β = 0: exactly it).
    Three heads with φ steep enough to spread their temperatures far apart: the loss is Σ_c w_c·(head c's plain
    Barlow Twins loss) with weights of mean one inside [1/4, 4] — solved for w from three different batches."""
    z1, z2 = (rng.normal(size=(16, 1, 8)).astype("float32") for _ in range(2))
    one_head = AMCLBarlowTwinsLoss(8, 16, beta=0.0, objective="head_weighted")
    np.testing.assert_allclose(float(one_head(z1, z2)), float(BarlowTwinsLoss()(z1, z2)), rtol=1e-5)

    loss = AMCLBarlowTwinsLoss(8, 16, beta=0.0, objective="head_weighted", temperature_hidden_dim=8)
    _steep(loss, 20.0)
    heads = [(rng.normal(size=(16, 3, 8)) * rng.uniform(0.2, 5.0, size=(1, 3, 1))).astype("float32") for _ in range(2)]
    plain = [float(BarlowTwinsLoss()(heads[0][:, c], heads[1][:, c])) for c in range(3)]
    tau = [np.exp(np.mean(np.log(loss.temperature.pairwise(
        tf.transpose(tf.constant(heads[0][:, c])), tf.transpose(tf.constant(heads[1][:, c]))).numpy()))) for c in range(3)]
    weights = reference.weighted_weights(tau)
    assert weights.min() >= 0.25 and weights.max() <= 4.0 and weights.std() > 0.01
    np.testing.assert_allclose(float(loss(*heads)), float(np.dot(weights, plain)), rtol=1e-4)


def test_head_weighted_is_barlow_twins_only():
    for make in (lambda: AMCLSimSiamLoss(8, objective="head_weighted"), lambda: AMCLNTXentLoss(8, objective="head_weighted")):
        with pytest.raises(ValueError, match="'head_weighted' exists, but not for AMCL"):
            make()


def test_weighted_is_refused_by_the_losses_with_negatives():
    for make in (lambda: AMCLNTXentLoss(8, objective="weighted"), lambda: AMCLInfoNCELoss(8, objective="weighted")):
        with pytest.raises(ValueError, match="'weighted' exists, but not for AMCL"):
            make()
