"""A subclassed Keras encoder (no `.inputs`): the model builds on its first batch or `model.build`,
trains like its functional twin, and an encoder with the wrong output rank gets a clear error."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import registry
from tests.methods import helpers


@keras.saving.register_keras_serializable(package="amcl_keras_tests")
class SubclassedConvNet(keras.Model):
    """conv → ReLU → global average pool, written as a subclass (clonable through get_config)."""

    def __init__(self, width=4, pool=True, **kwargs):
        super().__init__(**kwargs)
        self.width, self.pool = width, pool
        self.conv = keras.layers.Conv2D(width, 3, padding="same", activation="relu")
        self.pooling = keras.layers.GlobalAveragePooling2D()

    def call(self, images, training=False):
        x = self.conv(images)
        return self.pooling(x) if self.pool else x

    def get_config(self):
        return {**super().get_config(), "width": self.width, "pool": self.pool}


def functional_twin(width=4):
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs))
    return keras.Model(inputs, outputs)


def _model(method, encoder):
    """A small `method` model (tests/methods/helpers.py), compiled with SGD(0.5, global_clipnorm=1.0), on `encoder`."""
    return helpers.build(method, True, encoder=lambda: encoder)


@pytest.mark.parametrize("method", helpers.METHODS)
def test_subclassed_encoder_trains_as_its_functional_twin(method):
    view1, view2 = helpers.views()
    subclassed = _model(method, SubclassedConvNet())
    subclassed.build((None, 8, 8, 1))  # creates every variable now (MoCo: key encoder, queue)
    twin = _model(method, functional_twin())
    twin.set_weights(subclassed.get_weights())  # same layers in the same order
    queued = "queue_size" in registry.method(method).setting_names()  # a method with a momentum encoder and a queue
    if queued:
        assert subclassed.queue.keys.shape == (2, 32, 8) and int(subclassed.queue.pointer.numpy()) == 0
        for key, query in zip(subclassed.key_encoder.get_weights(), subclassed.encoder.get_weights()):
            np.testing.assert_array_equal(key, query)
    logs = helpers.one_step(subclassed, view1, view2)
    expected = helpers.one_step(twin, view1, view2)
    assert np.isfinite(logs["loss"][0])
    np.testing.assert_allclose(logs["loss"][0], expected["loss"][0], rtol=1e-5)
    for a, b in zip(subclassed.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    if queued:
        assert int(subclassed.queue.pointer.numpy()) == helpers.GLOBAL_BATCH


def test_subclassed_encoder_builds_on_the_first_batch_without_an_explicit_build():
    model = _model(helpers.DEFAULT_METHOD, SubclassedConvNet())
    assert not model.projector.built
    logs = helpers.one_step(model, *helpers.views())
    assert np.isfinite(logs["loss"][0]) and model.projector.built


def test_encoder_with_a_feature_map_output_is_refused_clearly():
    model = _model(helpers.DEFAULT_METHOD, SubclassedConvNet(pool=False))
    with pytest.raises(ValueError, match=r"must output \[batch, features\], got output shape \(2, 8, 8, 4\)"):
        model.build((None, 8, 8, 1))
    with pytest.raises(ValueError, match=r"must output \[batch, features\]"):
        _model(helpers.DEFAULT_METHOD, keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3)]))
