import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras.callbacks import NonFiniteLossError, NonFiniteLossGuard
from tests import reference
from tests.methods import helpers
from tests.methods.test_encoder_forward import embed

GLOBAL_BATCH = helpers.GLOBAL_BATCH
_views = helpers.views
_one_step = helpers.one_step


def _model(strategy, amcl_on, clipnorm=None):
    return helpers.build("simclr", amcl_on, strategy, clipnorm=clipnorm)


def test_train_step_loss_equals_numpy_on_the_model_embeddings():
    v1, v2 = _views(1)
    model = _model(tf.distribute.get_strategy(), True)
    # each view through the encoder on its own (the default encoder_forward="per_view")
    z = np.concatenate([model.projector(model.encoder(v, training=True)).numpy() for v in (v1, v2)])
    weights = model.contrastive_loss.temperature.get_weights()
    expected = reference.amcl_ntxent(z[:GLOBAL_BATCH], z[GLOBAL_BATCH:], weights, 0.01, "topk", 5, t_min=helpers.SMALL_MODEL["temperature_min"])
    logs = _one_step(model, v1, v2)
    np.testing.assert_allclose(logs["loss"][0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
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
    assert model.contrastive_loss.temperature == amcl.methods.simclr.SimCLRSettings.temperature == 0.1
    assert len(model.projector.heads) == 1
    assert [m.name for m in model.metrics] == ["loss", "skipped"]


def test_non_finite_input_stops_at_its_step_naming_the_encoder_and_the_last_temperatures():
    # Which downstream parts a NaN reaches (heads, φ) depends on the CPU's kernels (AVX2 vs
    # AVX-512 oneDNN paths differ), so only what must hold everywhere is asserted: the step,
    # the encoder named first as the origin of the gradients, the encoder or its batch-norm statistics
    # ("state") as the origin of the outputs, and the last finite temperatures. (In a compiled step
    # oneDNN fuses the fused batch norm with the ReLU after it, and its ReLU maps NaN to 0: the NaN
    # batch statistics stay in the moving statistics while the encoder's output can come out finite.)
    v1, v2 = _views(2)
    bad = v1.copy()
    bad[0, 0, 0, 0] = np.nan
    model = _model(tf.distribute.get_strategy(), True)
    dataset = tf.data.Dataset.from_tensor_slices(([v1, bad], [v2, v2]))
    with pytest.raises(NonFiniteLossError) as raised:
        model.fit(dataset, epochs=1, verbose=0, callbacks=[NonFiniteLossGuard()])
    message = str(raised.value)
    assert "epoch 1, step 2 " in message
    assert re.search(r"non-finite outputs in (encoder|state)[,;]", message), message
    assert re.search(r"non-finite gradients in encoder[,.]", message), message
    assert re.search(r"\(after epoch 1, step 1\): \{'tau_neg_0'", message), message


def test_a_head_gone_non_finite_is_named():
    v1, v2 = _views(2)
    model = _model(tf.distribute.get_strategy(), True)
    head = model.projector.heads[1]
    last = head.blocks[-1]  # the output Dense
    last.kernel.assign(np.full(last.kernel.shape, np.inf, "float32"))
    dataset = tf.data.Dataset.from_tensors((v1, v2)).repeat(2)
    with pytest.raises(NonFiniteLossError) as raised:
        model.fit(dataset, epochs=1, verbose=0, callbacks=[NonFiniteLossGuard()])
    message = str(raised.value)
    assert "step 1 (the step was skipped: no variable changed): non-finite outputs in head 1;" in message, message  # head 1 alone is the origin
    assert "head 1" in message.split("non-finite gradients in ")[1], message


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


@pytest.mark.parametrize("encoder_forward", ["per_view", "concatenated"])
def test_simclr_step_loss_follows_encoder_forward(encoder_forward):
    view1, view2 = _views(8)
    model = helpers.build("simclr", True, clipnorm=None, encoder_forward=encoder_forward)
    weights = model.contrastive_loss.temperature.get_weights()
    expected = {form: reference.amcl_ntxent(*embed(model, view1, view2, form == "per_view"), weights, 0.01, "topk", 5, t_min=helpers.SMALL_MODEL["temperature_min"])
                for form in ("per_view", "concatenated")}
    loss = _one_step(model, view1, view2)["loss"][0]
    np.testing.assert_allclose(loss, expected[encoder_forward], rtol=1e-5, atol=1e-6)
    other = expected["concatenated" if encoder_forward == "per_view" else "per_view"]
    assert abs(loss - other) > 1e-3 * abs(other), (loss, other)
