import numpy as np
import pytest

import amcl_keras as amcl
from tests import reference
from tests.methods.helpers import GLOBAL_BATCH, build, one_step, views


def test_queue_starts_normalised_and_key_encoder_starts_equal():
    model = build("moco", True)
    assert model.queue.shape == (2, 32, 8)
    np.testing.assert_allclose(np.linalg.norm(model.queue.numpy(), axis=-1), 1.0, rtol=1e-6)
    for k, q in zip(model.key_encoder.get_weights(), model.encoder.get_weights()):
        np.testing.assert_array_equal(k, q)
    assert model.key_encoder.trainable_weights == [] and model.key_projector.trainable_weights == []
    assert not any(v is model.queue for v in model.trainable_variables)


def test_momentum_update_and_queue_order_are_exact():
    view1, view2 = views(4)
    model = build("moco", True, clipnorm=None)
    old_keys = [w.copy() for w in model.key_encoder.get_weights() + model.key_projector.get_weights()]
    old_queue = model.queue.numpy().copy()
    # the keys the step will enqueue: the key encoder (training mode) before its momentum update
    keys = model.key_projector(model.key_encoder(np.concatenate([view1, view2]), training=True), training=True).numpy()
    keys = reference.normalize(keys.astype(np.float64))
    one_step(model, view1, view2)
    # w_k ← m·w_k + (1 − m)·w_q with the query weights AFTER the optimizer step (trainable weights)
    key_vars = model.key_encoder.weights + model.key_projector.weights
    query_vars = model.encoder.weights + model.projector.weights
    for old, k_var, q_var in zip(old_keys, key_vars, query_vars):
        if q_var.trainable:
            np.testing.assert_allclose(k_var.numpy(), 0.9 * old + 0.1 * q_var.numpy(), rtol=1e-6, atol=1e-7)
    # FIFO: slots 0..15 now hold [view-1 keys, view-2 keys] per head; the rest is untouched
    queue = model.queue.numpy()
    expected = np.transpose(keys, (1, 0, 2))  # [C, 2B, d]
    np.testing.assert_allclose(queue[:, : 2 * GLOBAL_BATCH], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(queue[:, 2 * GLOBAL_BATCH :], old_queue[:, 2 * GLOBAL_BATCH :])
    assert int(model.queue_pointer.numpy()) == 16
    one_step(model, view1, view2)
    one_step(model, view1, view2)  # 48 keys into 32 slots: the pointer wraps
    assert int(model.queue_pointer.numpy()) == 48 % 32


def test_loss_is_the_symmetric_queue_loss():
    view1, view2 = views(5)
    model = build("moco", False, clipnorm=None)
    z = model.projector(model.encoder(np.concatenate([view1, view2]), training=True)).numpy()
    k = model.key_projector(model.key_encoder(np.concatenate([view1, view2]), training=True)).numpy()
    queue = model.queue.numpy()
    b = GLOBAL_BATCH
    expected = 0.5 * (reference.infonce(z[:b], k[b:], queue, 0.1) + reference.infonce(z[b:], k[:b], queue, 0.1))
    np.testing.assert_allclose(one_step(model, view1, view2)["loss"][0], expected, rtol=1e-5)


def test_queue_smaller_than_two_batches_is_refused():
    model = amcl.MoCo(amcl.encoders.small_convnet((8, 8, 1), width=4), num_heads=1, projection_dim=8,
                      hidden_dim=8, queue_size=8)
    model.compile(optimizer="sgd")
    view1, view2 = views()
    with pytest.raises(ValueError, match="queue_size >= 16"):
        one_step(model, view1, view2)


@pytest.mark.parametrize("kwargs,message", [({"queue_size": 0}, "queue_size"), ({"momentum": 1.0}, "momentum")])
def test_bad_moco_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        amcl.MoCo(amcl.encoders.small_convnet((8, 8, 1), width=4), **kwargs)


def test_checkpoint_keeps_the_queue(tmp_path):
    model = build("moco", True)
    one_step(model, *views())
    path = str(tmp_path / "moco.weights.h5")
    model.save_weights(path)
    clone = build("moco", True)
    clone.load_weights(path)
    np.testing.assert_array_equal(clone.queue.numpy(), model.queue.numpy())
    assert int(clone.queue_pointer.numpy()) == 16
