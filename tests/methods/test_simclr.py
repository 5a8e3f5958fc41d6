import keras
import numpy as np
import pytest
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras.callbacks import NonFiniteLossError, NonFiniteLossGuard
from tests import reference

GLOBAL_BATCH = 8


def _model(strategy, amcl_on, clipnorm=None):
    with strategy.scope():
        encoder = amcl.encoders.small_convnet((8, 8, 1), width=4, synchronized_batch_norm=True)
        loss = amcl.losses.AMCLNTXentLoss(8, beta=0.01, top_k=5, temperature_hidden_dim=8) if amcl_on else None
        model = amcl.SimCLR(encoder, num_heads=2, amcl=amcl_on, projection_dim=8, hidden_dim=16, loss=loss)
        model.compile(optimizer=keras.optimizers.SGD(0.5, global_clipnorm=clipnorm))
    return model


def _views(seed=0):
    """Two views of 8 distinct images: per-image gratings of different frequency and phase,
    plus noise, so that embeddings differ clearly and the top-k negatives have no near-ties."""
    rng = np.random.default_rng(seed)
    grid = np.arange(8, dtype="float32")
    freq = rng.uniform(0.2, 2.0, size=(GLOBAL_BATCH, 1, 1, 1))
    phase = rng.uniform(0, 6.28, size=(GLOBAL_BATCH, 1, 1, 1))
    base = 0.5 + 0.5 * np.sin(freq * grid[None, :, None, None] + phase) * np.cos(freq * grid[None, None, :, None])
    noise = lambda: 0.1 * rng.normal(size=base.shape)  # noqa: E731
    return (base + noise()).astype("float32"), (base + noise()).astype("float32")


def _one_step(model, v1, v2):
    dataset = tf.data.Dataset.from_tensors((v1, v2))
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    return history.history


@pytest.fixture(scope="module")
def two_replicas():
    # One MirroredStrategy per process: several instances can collide in their collective keys.
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.mark.parametrize("amcl_on", [True, False])
def test_mirrored_two_replicas_equal_one_device(amcl_on, two_replicas):
    """Loss and the weights after one SGD step (i.e. the gradients) match one device on the
    same global batch: negatives span the global batch and replica gradients sum correctly."""
    v1, v2 = _views()
    single = _model(tf.distribute.get_strategy(), amcl_on, clipnorm=1.0)
    mirrored = _model(two_replicas, amcl_on, clipnorm=1.0)
    assert two_replicas.num_replicas_in_sync == 2
    mirrored.set_weights(single.get_weights())
    before = [w.copy() for w in single.get_weights()]

    unclipped = _model(tf.distribute.get_strategy(), amcl_on, clipnorm=None)
    unclipped.set_weights(before)

    single_logs = _one_step(single, v1, v2)
    mirrored_logs = _one_step(mirrored, v1, v2)
    _one_step(unclipped, v1, v2)
    clipping_acted = any(not np.allclose(s, u) for s, u in zip(single.get_weights(), unclipped.get_weights()))
    assert clipping_acted, "the global gradient norm should exceed 1.0 here, so clipping is exercised"

    np.testing.assert_allclose(mirrored_logs["loss"], single_logs["loss"], rtol=1e-5)
    moved = 0
    for b, s, m in zip(before, single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(m, s, rtol=1e-5, atol=1e-6)
        moved += not np.allclose(b, s)
    assert moved > 10, "the step must actually change the weights for this comparison to mean anything"
    if amcl_on:
        for key in ("tau_pos_0", "tau_neg_1"):
            np.testing.assert_allclose(mirrored_logs[key], single_logs[key], rtol=1e-5)


def test_train_step_loss_equals_numpy_on_the_model_embeddings():
    v1, v2 = _views(1)
    model = _model(tf.distribute.get_strategy(), True)
    features = model.encoder(np.concatenate([v1, v2]), training=True)
    z = model.projector(features).numpy()
    weights = model.contrastive_loss.temperature.get_weights()
    expected = reference.amcl_ntxent(z[:GLOBAL_BATCH], z[GLOBAL_BATCH:], weights, 0.01, "topk", 5)
    logs = _one_step(model, v1, v2)
    np.testing.assert_allclose(logs["loss"][0], expected, rtol=1e-5, atol=1e-6)


def test_xla_compiled_step_equals_the_plain_step():
    v1, v2 = _views(3)
    plain = _model(tf.distribute.get_strategy(), True)
    compiled = _model(tf.distribute.get_strategy(), True)
    compiled.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=True)
    compiled.set_weights(plain.get_weights())
    np.testing.assert_allclose(_one_step(compiled, v1, v2)["loss"], _one_step(plain, v1, v2)["loss"], rtol=1e-5)
    for a, b in zip(plain.get_weights(), compiled.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_plain_simclr_is_one_head_ntxent():
    encoder = amcl.encoders.small_convnet((8, 8, 1), width=4)
    model = amcl.SimCLR(encoder, num_heads=1, amcl=False, projection_dim=8, hidden_dim=16)
    assert isinstance(model.contrastive_loss, amcl.losses.NTXentLoss)
    assert model.contrastive_loss.temperature == 0.5
    assert len(model.projector.heads) == 1
    assert [m.name for m in model.metrics] == ["loss"]


def test_non_finite_loss_stops_with_epoch_and_step():
    v1, v2 = _views(2)
    v1[0, 0, 0, 0] = np.nan
    model = _model(tf.distribute.get_strategy(), True)
    dataset = tf.data.Dataset.from_tensors((v1, v2)).repeat(3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1.*tau_pos_0"):
        model.fit(dataset, epochs=1, verbose=0, callbacks=[NonFiniteLossGuard()])


def test_fit_on_wrong_data_explains_what_is_expected():
    model = _model(tf.distribute.get_strategy(), True)
    with pytest.raises(ValueError, match=r"\(view1, view2\)"):
        model.fit(tf.data.Dataset.from_tensors(_views()[0]), epochs=1, verbose=0)


def test_contradicting_options_are_refused():
    encoder = amcl.encoders.small_convnet((8, 8, 1), width=4)
    with pytest.raises(ValueError, match="contradicts"):
        amcl.SimCLR(encoder, amcl=False, projection_dim=8, loss=amcl.losses.AMCLNTXentLoss(8))
    with pytest.raises(ValueError, match="projection_dim"):
        amcl.SimCLR(encoder, projection_dim=8, loss=amcl.losses.AMCLNTXentLoss(16))
    with pytest.raises(TypeError, match="encoder"):
        amcl.SimCLR("resnet18", projection_dim=8)


def test_registry_lists_known_methods():
    assert amcl.methods.get("simclr") is amcl.SimCLR
    with pytest.raises(ValueError, match="simclr"):
        amcl.methods.get("byol")
