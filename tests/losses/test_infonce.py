import numpy as np
import pytest
import tensorflow as tf

from amcl_keras.losses import AMCLInfoNCELoss, InfoNCELoss
from tests import reference


@pytest.mark.parametrize("batch,heads,dim,queue", [(3, 1, 4, 5), (6, 2, 8, 20), (4, 3, 16, 64)])
def test_infonce_matches_numpy(rng, batch, heads, dim, queue):
    q, k = (rng.normal(size=(batch, heads, dim)).astype("float32") for _ in range(2))
    bank = rng.normal(size=(heads, queue, dim)).astype("float32")
    np.testing.assert_allclose(float(InfoNCELoss(0.1)(q, k, bank)), reference.infonce(q, k, bank, 0.1), rtol=1e-5)


def test_infonce_queue_of_identical_keys_is_analytic(rng):
    """A queue of M copies of u: loss = −log(e^{a/τ} / (e^{a/τ} + M·e^{b/τ})), a = cos(q,k), b = cos(q,u)."""
    q, k, u = (reference.normalize(rng.normal(size=8)) for _ in range(3))
    for m in (1, 7, 4096):
        bank = np.tile(u, (m, 1)).astype("float32")
        a, b, tau = q @ k, q @ u, 0.2
        expected = -np.log(np.exp(a / tau) / (np.exp(a / tau) + m * np.exp(b / tau)))
        got = float(InfoNCELoss(tau)(q[None].astype("float32"), k[None].astype("float32"), bank))
        np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("negatives", ["topk", "hardest"])
# the three ways `select_negatives` computes τ are all covered: queue ≤ k·d (one matmul for all keys; the first
# three top-k cases), queue > k·d with batch·k < queue (φ on the chosen keys: (2, 2, 8, 64, 5), "hardest" mostly)
# and queue > k·d with batch·k ≥ queue (φ on the queue, then gathered: (8, 2, 4, 6, 1))
@pytest.mark.parametrize(
    "batch,heads,dim,queue,top_k",
    [(3, 1, 4, 5, 100), (6, 2, 8, 20, 4), (5, 3, 16, 32, 10), (2, 2, 8, 64, 5), (8, 2, 4, 6, 1)],
)
def test_amcl_infonce_matches_numpy(rng, negatives, batch, heads, dim, queue, top_k):
    q, k = (rng.normal(size=(batch, heads, dim)).astype("float32") for _ in range(2))
    bank = rng.normal(size=(heads, queue, dim)).astype("float32")
    loss = AMCLInfoNCELoss(dim, beta=0.05, negatives=negatives, top_k=top_k, temperature_hidden_dim=16)
    expected = reference.amcl_infonce(q, k, bank, loss.temperature.get_weights(), 0.05, negatives, top_k)
    np.testing.assert_allclose(float(loss(q, k, bank)), expected, rtol=1e-5, atol=1e-6)


def test_keys_and_queue_receive_no_gradient(rng):
    q, k = (tf.constant(rng.normal(size=(4, 2, 8)), tf.float32) for _ in range(2))
    bank = tf.constant(rng.normal(size=(2, 10, 8)), tf.float32)
    for loss in (InfoNCELoss(), AMCLInfoNCELoss(8, top_k=3)):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([q, k, bank])
            value = loss(q, k, bank)
        assert tape.gradient(value, k) is None and tape.gradient(value, bank) is None
        assert np.any(tape.gradient(value, q).numpy() != 0)


def test_queue_shape_is_checked(rng):
    q = rng.normal(size=(4, 2, 8)).astype("float32")
    with pytest.raises(ValueError, match="num_heads, queue_size, d"):
        InfoNCELoss()(q, q, rng.normal(size=(3, 10, 8)).astype("float32"))
