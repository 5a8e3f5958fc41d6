import numpy as np
import pytest

from amcl_keras.losses import AMCLBarlowTwinsLoss, BarlowTwinsLoss
from tests import reference


@pytest.mark.parametrize("batch,heads,dim", [(4, 1, 3), (16, 2, 8), (32, 3, 16)])
def test_barlow_twins_matches_numpy(rng, batch, heads, dim):
    z1, z2 = (rng.normal(size=(batch, heads, dim)).astype("float32") for _ in range(2))
    np.testing.assert_allclose(
        float(BarlowTwinsLoss(5e-3)(z1, z2)), reference.barlow_twins(z1, z2, 5e-3), rtol=1e-5
    )


def test_barlow_twins_is_invariant_to_an_affine_change_of_one_view(rng):
    x = rng.normal(size=(64, 16)).astype("float32")
    loss = BarlowTwinsLoss()
    np.testing.assert_allclose(float(loss(x, x)), float(loss(x, 2 * x + 4)), rtol=1e-4, atol=1e-5)



def test_barlow_twins_analytic_value_on_decorrelated_channels(rng):
    """Zero-mean orthogonal channels: C = (B−1)/B·I (unbiased std, 1/B normaliser), so the loss is d/B²."""
    centred = rng.normal(size=(64, 16))
    centred -= centred.mean(axis=0)
    channels = np.linalg.qr(centred)[0].astype("float32")  # orthonormal, still zero-mean columns
    np.testing.assert_allclose(float(BarlowTwinsLoss()(channels, channels)), 16 / 64**2, rtol=1e-3)


@pytest.mark.parametrize("batch,heads,dim", [(4, 1, 3), (16, 2, 8), (24, 3, 6)])
def test_amcl_barlow_twins_matches_numpy(rng, batch, heads, dim):
    z1, z2 = (rng.normal(size=(batch, heads, dim)).astype("float32") for _ in range(2))
    loss = AMCLBarlowTwinsLoss(dim, batch_size=batch, lambda_=5e-3, beta=1e-3, temperature_hidden_dim=8, objective="authors")
    expected = reference.amcl_barlow_twins(z1, z2, loss.temperature.get_weights(), 1e-3, 5e-3)
    np.testing.assert_allclose(float(loss(z1, z2)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("objective", ["authors", "rectified", "normalized", "weighted", "head_weighted"])
def test_amcl_barlow_twins_float32_stays_at_round_off_for_many_channel_pairs(objective):
    """d = 1024 (1M channel pairs per head): the float32 loss, its stats and its gradient agree with the same
    loss in float64 to round-off, ~1e-7 (summing the d² pairs in one float32 loop, as XLA's CPU reduction
    does, would be off by 3e-6 to 3e-5 here)."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    z1, z2 = (rng.normal(size=(16, 2, 1024)) for _ in range(2))
    options = dict(beta=1e-3, temperature_hidden_dim=8, temperature_min=0.05, objective=objective)
    losses = {dtype: AMCLBarlowTwinsLoss(1024, 16, dtype=dtype, **options) for dtype in ("float32", "float64")}
    losses["float64"].temperature.set_weights(losses["float32"].temperature.get_weights())
    results = {}
    for dtype, loss in losses.items():
        inputs = [tf.constant(z, dtype) for z in (z1, z2)]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            value, stats = loss.loss_and_stats(*inputs)
        results[dtype] = (value, stats, tape.gradient(value, inputs))
    (value32, stats32, grad32), (value64, stats64, grad64) = results["float32"], results["float64"]
    np.testing.assert_allclose(float(value32), float(value64), rtol=1e-6)
    for name in ("tau_pos", "tau_neg"):
        np.testing.assert_allclose(stats32[name].numpy(), stats64[name].numpy(), rtol=1e-6)
    for g32, g64 in zip(grad32, grad64):
        np.testing.assert_allclose(g32.numpy(), g64.numpy(), rtol=1e-3, atol=1e-4 * float(np.abs(g64).max()))


def test_amcl_barlow_twins_with_one_channel_is_finite():
    """d = 1 has no off-diagonal pairs: the negative terms are 0 (the normalized form divides by no pair)."""
    z1, z2 = (np.random.default_rng(seed).normal(size=(8, 1)).astype("float32") for seed in (0, 1))
    for objective in ("authors", "rectified", "normalized", "weighted", "head_weighted"):
        loss = AMCLBarlowTwinsLoss(1, 8, temperature_hidden_dim=4, objective=objective)
        value, stats = loss.loss_and_stats(z1, z2)
        assert np.isfinite(float(value)) and np.isfinite(stats["tau_pos"].numpy()).all(), objective


def test_amcl_barlow_twins_temperatures_are_over_channel_pairs(rng):
    z = rng.normal(size=(8, 2, 5)).astype("float32")
    loss = AMCLBarlowTwinsLoss(5, batch_size=8, temperature_min=0.1, temperature_max=0.9, objective="authors")
    assert [w.shape for w in loss.temperature.get_weights()] == [(8, 128), (128,), (128, 8), (8,)]
    _, stats = loss.loss_and_stats(z, z)
    assert stats["tau_pos"].shape == (2,) and stats["tau_neg"].shape == (2,)
    assert np.all((stats["tau_pos"].numpy() > 0.1) & (stats["tau_pos"].numpy() < 0.9))


def test_amcl_barlow_twins_refuses_another_batch_size(rng):
    loss = AMCLBarlowTwinsLoss(4, batch_size=16)
    z = rng.normal(size=(12, 4)).astype("float32")
    with pytest.raises(ValueError, match="global batch of 16.*global batch of 12"):
        loss(z, z)


@pytest.mark.parametrize("objective", ["authors", "rectified", "normalized", "weighted", "head_weighted"])
def test_the_plain_tensorflow_path_equals_the_xla_fused_one(objective):
    """Without XLA (a build or device that lacks it) the loss takes the plain TensorFlow path: the same value, the
    same gradients for the embeddings and φ, to float32 round-off."""
    import tensorflow as tf

    from amcl_keras.losses import barlow_twins

    rng = np.random.default_rng(5)
    z1, z2 = (tf.constant(rng.normal(size=(32, 2, 64)), tf.float32) for _ in range(2))
    loss = AMCLBarlowTwinsLoss(64, 32, beta=1e-3, temperature_hidden_dim=8, temperature_min=0.05, objective=objective)
    results = {}
    try:
        for fused in (True, False):
            assert barlow_twins.use_fused_xla(fused) is fused
            with tf.GradientTape() as tape:
                tape.watch([z1, z2])
                value, stats = loss.loss_and_stats(z1, z2)
            results[fused] = (value, stats, tape.gradient(value, [z1, z2] + loss.temperature.trainable_variables))
    finally:
        barlow_twins.use_fused_xla(None)
    (v_fused, s_fused, g_fused), (v_plain, s_plain, g_plain) = results[True], results[False]
    np.testing.assert_allclose(float(v_plain), float(v_fused), rtol=1e-5)
    for name in s_fused:
        np.testing.assert_allclose(s_plain[name].numpy(), s_fused[name].numpy(), rtol=1e-5)
    for a, b in zip(g_plain, g_fused):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5 * float(np.abs(b.numpy()).max()))
