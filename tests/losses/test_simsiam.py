import numpy as np
import pytest
import tensorflow as tf

from amcl_keras.losses import AMCLSimSiamLoss, SimSiamLoss
from tests import reference


@pytest.mark.parametrize("batch,heads,dim", [(2, 1, 4), (8, 3, 16)])
def test_simsiam_matches_numpy(rng, batch, heads, dim):
    p1, p2, z1, z2 = (rng.normal(size=(batch, heads, dim)).astype("float32") for _ in range(4))
    np.testing.assert_allclose(float(SimSiamLoss()(p1, p2, z1, z2)), reference.simsiam(p1, p2, z1, z2), rtol=1e-5)


def test_simsiam_identical_predictions_and_targets_give_minus_one_per_head(rng):
    z = rng.normal(size=(5, 3, 8)).astype("float32")
    np.testing.assert_allclose(float(SimSiamLoss()(z, z, z, z)), -3.0, rtol=1e-6)


@pytest.mark.parametrize("batch,heads,dim", [(2, 1, 4), (8, 3, 16)])
def test_amcl_simsiam_matches_numpy(rng, batch, heads, dim):
    p1, p2, z1, z2 = (rng.normal(size=(batch, heads, dim)).astype("float32") for _ in range(4))
    loss = AMCLSimSiamLoss(dim, beta=0.05, temperature_hidden_dim=16)
    expected = reference.simsiam(p1, p2, z1, z2, loss.temperature.get_weights(), 0.05)
    np.testing.assert_allclose(float(loss(p1, p2, z1, z2)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", [SimSiamLoss(), AMCLSimSiamLoss(8)], ids=["simsiam", "amcl"])
def test_targets_receive_no_gradient(rng, loss):
    p1, p2, z1, z2 = (tf.constant(rng.normal(size=(4, 2, 8)), tf.float32) for _ in range(4))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([p1, p2, z1, z2])
        value = loss(p1, p2, z1, z2)
    assert tape.gradient(value, z1) is None and tape.gradient(value, z2) is None
    assert np.any(tape.gradient(value, p1).numpy() != 0) and np.any(tape.gradient(value, p2).numpy() != 0)
