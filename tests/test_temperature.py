import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import AdaptiveTemperature, omega
from tests import reference


def test_weights_are_w1_b1_w2_b2_in_order():
    layer = AdaptiveTemperature(projection_dim=12, hidden_dim=5)
    shapes = [w.shape for w in layer.get_weights()]
    assert shapes == [(12, 5), (5,), (5, 12), (12,)]


def test_call_matches_numpy_and_shape(rng):
    layer = AdaptiveTemperature(8, hidden_dim=16, temperature_min=0.01, temperature_max=1.5)
    a = reference.normalize(rng.normal(size=(3, 4, 8))).astype("float32")
    b = reference.normalize(rng.normal(size=(3, 4, 8))).astype("float32")
    tau = layer(a, b).numpy()
    assert tau.shape == (3, 4)
    weights = layer.get_weights()
    expected = [[reference.temperature(weights, a[i, j], b[i, j], 0.01, 1.5) for j in range(4)] for i in range(3)]
    np.testing.assert_allclose(tau, expected, rtol=1e-5)


def test_pairwise_equals_elementwise_on_every_pair(rng):
    layer = AdaptiveTemperature(8)
    a = reference.normalize(rng.normal(size=(5, 8))).astype("float32")
    b = reference.normalize(rng.normal(size=(7, 8))).astype("float32")
    pairwise = layer.pairwise(a, b).numpy()
    elementwise = layer(np.repeat(a, 7, axis=0), np.tile(b, (5, 1))).numpy().reshape(5, 7)
    np.testing.assert_allclose(pairwise, elementwise, rtol=1e-6)


def test_temperatures_stay_inside_bounds_even_for_extreme_scores():
    layer = AdaptiveTemperature(4, temperature_min=1e-5, temperature_max=2.0)
    tau = layer.from_scores(tf.constant([-1e4, -10.0, 0.0, 10.0, 1e4])).numpy()
    assert np.all(tau >= 1e-5) and np.all(tau <= 2.0)
    np.testing.assert_allclose(tau[2], 1e-5 + (2.0 - 1e-5) * 0.5, rtol=1e-6)
    assert tau[0] > tau[1] > tau[2] > tau[3] > tau[4]  # alike pairs (high score) get low τ


@pytest.mark.parametrize("dim", [2, 16, 128, 2048])
def test_omega_minimum_is_at_two_over_d(dim):
    tau = np.geomspace(1e-5, 2.0, 200001)
    values = omega(tf.constant(tau), dim).numpy()
    best = tau[np.argmin(values)]
    np.testing.assert_allclose(best, 2.0 / dim, rtol=1e-3)
    np.testing.assert_allclose(float(omega(tf.constant(0.3, tf.float64), dim)), reference.omega(0.3, dim), rtol=1e-12)


def test_float32_under_mixed_precision_policy():
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = AdaptiveTemperature(8)
        out = layer(tf.ones([2, 8], tf.float16), tf.ones([2, 8], tf.float16))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.float32
    assert all(w.dtype == np.float32 for w in layer.get_weights())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"projection_dim": 0}, "projection_dim"),
        ({"projection_dim": 8, "hidden_dim": -1}, "hidden_dim"),
        ({"projection_dim": 8, "temperature_min": 0.0}, "temperature_min"),
        ({"projection_dim": 8, "temperature_min": 1.0, "temperature_max": 0.5}, "temperature_max"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveTemperature(**kwargs)


def test_wrong_width_is_explained():
    with pytest.raises(ValueError, match="projection_dim=8"):
        AdaptiveTemperature(8)(tf.ones([2, 4]), tf.ones([2, 4]))


def test_stop_gradient_keeps_the_temperatures_and_cuts_only_the_encoders_path_through_them():
    """`temperature_stop_gradient`: the same loss value and the same gradient for φ, but no gradient reaches the
    embeddings through τ — what remains is the loss's gradient with the temperatures held fixed."""
    import amcl_keras as amcl

    rng = np.random.default_rng(0)
    z1, z2 = (tf.constant(rng.normal(size=(16, 2, 8)), tf.float32) for _ in range(2))
    results = {}
    for stop in (False, True):
        loss = amcl.losses.AMCLBarlowTwinsLoss(8, 16, objective="weighted", temperature_hidden_dim=8, beta=0.0,
                                               temperature_stop_gradient=stop)
        if stop:
            loss.temperature.set_weights(weights)
        weights = loss.temperature.get_weights()
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(z1)
            value = loss(z1, z2)
            tau = loss.temperature.pairwise(tf.transpose(z1, [1, 2, 0]), tf.transpose(z2, [1, 2, 0]))
        results[stop] = (float(value), tape.gradient(value, z1).numpy(), tape.gradient(tau, z1),
                         [g.numpy() for g in tape.gradient(value, loss.temperature.trainable_variables)])
    (value_full, grad_full, tau_grad_full, phi_full), (value_stop, grad_stop, tau_grad_stop, phi_stop) = results.values()
    assert value_full == pytest.approx(value_stop, rel=1e-6)
    for a, b in zip(phi_full, phi_stop):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    assert tau_grad_stop is None and tau_grad_full is not None
    assert np.abs(grad_full - grad_stop).max() > 1e-6  # the path through τ existed and is gone
    # what is left: Barlow Twins' gradient with every term re-weighted by the (fixed) weights, so it is not zero
    assert np.abs(grad_stop).max() > 0
