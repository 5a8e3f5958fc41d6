import numpy as np
import pytest
import tensorflow as tf

from amcl_keras.losses import AMCLNTXentLoss, NTXentLoss
from tests import reference


@pytest.mark.parametrize("batch,dim", [(2, 4), (5, 8), (16, 32)])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_matches_numpy(rng, batch, dim, temperature):
    z1 = rng.normal(size=(batch, dim)).astype("float32")
    z2 = rng.normal(size=(batch, dim)).astype("float32")
    value = float(NTXentLoss(temperature)(z1, z2))
    np.testing.assert_allclose(value, reference.ntxent(z1, z2, temperature), rtol=1e-5)


def test_ntxent_sums_over_heads(rng):
    z1 = rng.normal(size=(6, 3, 8)).astype("float32")
    z2 = rng.normal(size=(6, 3, 8)).astype("float32")
    value = float(NTXentLoss(0.5)(z1, z2))
    per_head = [reference.ntxent(z1[:, c], z2[:, c], 0.5) for c in range(3)]
    np.testing.assert_allclose(value, sum(per_head), rtol=1e-5)


@pytest.mark.parametrize("batch", [2, 7, 32])
def test_ntxent_identical_embeddings_is_log_2n_minus_1(batch):
    z = np.ones((batch, 16), "float32")
    np.testing.assert_allclose(float(NTXentLoss(0.5)(z, z)), np.log(2 * batch - 1), rtol=1e-6)


@pytest.mark.parametrize("negatives", ["topk", "hardest"])
@pytest.mark.parametrize(
    "batch,heads,dim,top_k",
    [(2, 1, 4, 100), (5, 3, 8, 3), (8, 2, 16, 100), (12, 3, 32, 5), (4, 1, 8, 1)],
)
def test_amcl_ntxent_matches_numpy(rng, negatives, batch, heads, dim, top_k):
    z1 = rng.normal(size=(batch, heads, dim)).astype("float32")
    z2 = rng.normal(size=(batch, heads, dim)).astype("float32")
    loss = AMCLNTXentLoss(dim, beta=0.05, negatives=negatives, top_k=top_k, temperature_hidden_dim=16, objective="authors")
    value = float(loss(z1, z2))
    weights = loss.temperature.get_weights()
    expected = reference.amcl_ntxent(z1, z2, weights, 0.05, negatives, top_k)
    # 1e-5 relative; the AMCL terms are O(1) and may cancel to a total near 0, so float32
    # round-off (~1e-7 per term) gets an absolute floor of 1e-6.
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


def test_amcl_ntxent_non_default_temperature_bounds(rng):
    z1 = rng.normal(size=(6, 2, 8)).astype("float32")
    z2 = rng.normal(size=(6, 2, 8)).astype("float32")
    loss = AMCLNTXentLoss(8, beta=1e-4, top_k=4, temperature_min=0.05, temperature_max=0.7, objective="authors")
    expected = reference.amcl_ntxent(z1, z2, loss.temperature.get_weights(), 1e-4, "topk", 4, 0.05, 0.7)
    np.testing.assert_allclose(float(loss(z1, z2)), expected, rtol=1e-5, atol=1e-6)


def test_amcl_ntxent_steep_temperatures_stay_accurate(rng):
    """Scaled-up φ pushes τ towards τ_min (logits of order 1e3–1e5): float32 still agrees."""
    z1 = rng.normal(size=(6, 2, 8)).astype("float32")
    z2 = rng.normal(size=(6, 2, 8)).astype("float32")
    loss = AMCLNTXentLoss(8, top_k=4, temperature_hidden_dim=16, objective="authors")
    loss.temperature.set_weights([w * 3.0 for w in loss.temperature.get_weights()])
    expected = reference.amcl_ntxent(z1, z2, loss.temperature.get_weights(), 1e-4, "topk", 4)
    np.testing.assert_allclose(float(loss(z1, z2)), expected, rtol=1e-4)


def test_top_k_one_is_hardest_up_to_the_regulariser_factor(rng):
    """k = 1 gives Eq. 2.1 except the negative regulariser's d/2 factor (docs/METHOD.md §4)."""
    z1 = rng.normal(size=(5, 2, 8)).astype("float32")
    z2 = rng.normal(size=(5, 2, 8)).astype("float32")
    top1 = AMCLNTXentLoss(8, beta=0.0, negatives="topk", top_k=1, objective="authors")
    hardest = AMCLNTXentLoss(8, beta=0.0, negatives="hardest", objective="authors")
    hardest.temperature.set_weights(top1.temperature.get_weights())
    np.testing.assert_allclose(float(top1(z1, z2)), float(hardest(z1, z2)), rtol=1e-6)


def test_amcl_stats_are_per_head_and_inside_bounds(rng):
    z1 = rng.normal(size=(6, 3, 8)).astype("float32")
    z2 = rng.normal(size=(6, 3, 8)).astype("float32")
    loss = AMCLNTXentLoss(8, top_k=4, temperature_min=0.1, temperature_max=0.9, objective="authors")
    _, stats = loss.loss_and_stats(z1, z2)
    for key in ("tau_pos", "tau_neg"):
        values = stats[key].numpy()
        assert values.shape == (3,)
        assert np.all((values > 0.1) & (values < 0.9))
    # independent check of the positive mean for head 0
    views = reference.normalize(np.concatenate([z1[:, 0], z2[:, 0]]).astype(np.float64))
    weights = loss.temperature.get_weights()
    taus = [reference.temperature(weights, views[i], views[(i + 6) % 12], 0.1, 0.9) for i in range(12)]
    np.testing.assert_allclose(stats["tau_pos"][0], np.mean(taus), rtol=1e-5)


def test_amcl_gradients_finite_with_float16_inputs(rng):
    z1 = tf.constant(rng.normal(size=(8, 3, 16)), tf.float16)
    z2 = tf.constant(rng.normal(size=(8, 3, 16)), tf.float16)
    loss = AMCLNTXentLoss(16, top_k=5, objective="authors")
    with tf.GradientTape() as tape:
        tape.watch([z1, z2])
        value = loss(z1, z2)
    grads = tape.gradient(value, [z1, z2] + loss.trainable_variables)
    assert value.dtype == tf.float32
    assert np.isfinite(value.numpy())
    for grad in grads:
        assert np.all(np.isfinite(tf.cast(grad, tf.float32).numpy()))


def test_ntxent_gradients_finite_with_float16_inputs(rng):
    z1 = tf.constant(rng.normal(size=(8, 16)), tf.float16)
    z2 = tf.constant(rng.normal(size=(8, 16)), tf.float16)
    with tf.GradientTape() as tape:
        tape.watch([z1, z2])
        value = NTXentLoss(0.1)(z1, z2)
    for grad in tape.gradient(value, [z1, z2]):
        assert np.all(np.isfinite(tf.cast(grad, tf.float32).numpy()))


def test_amcl_ntxent_works_inside_tf_function(rng):
    z1 = rng.normal(size=(6, 2, 8)).astype("float32")
    z2 = rng.normal(size=(6, 2, 8)).astype("float32")
    loss = AMCLNTXentLoss(8, top_k=3, objective="authors")
    compiled = tf.function(lambda a, b: loss(a, b), jit_compile=False)
    np.testing.assert_allclose(float(compiled(z1, z2)), float(loss(z1, z2)), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"negatives": "all"}, "negatives"),
        ({"top_k": 0}, "top_k"),
        ({"beta": -1.0}, "beta"),
        ({"temperature_min": 2.0, "temperature_max": 1.0}, "temperature_min < temperature_max"),
    ],
)
def test_amcl_ntxent_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AMCLNTXentLoss(8, **kwargs)


def test_amcl_ntxent_rejects_wrong_projection_dim(rng):
    loss = AMCLNTXentLoss(8, objective="authors")
    z = rng.normal(size=(4, 2, 16)).astype("float32")
    with pytest.raises(ValueError, match="projection_dim=8"):
        loss(z, z)


def test_losses_reject_mismatched_views(rng):
    with pytest.raises(ValueError, match="same shape"):
        NTXentLoss()(rng.normal(size=(4, 8)), rng.normal(size=(5, 8)))
