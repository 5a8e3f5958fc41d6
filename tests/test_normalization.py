"""SyncBatchNormalization's fused training path: the same outputs, gradients and moving statistics as Keras's own
batch norm and as the equations in NumPy, and Keras's path wherever the fused kernel would compute something else."""

import numpy as np
import pytest
import tensorflow as tf

import keras
from amcl_keras.normalization import SyncBatchNormalization

EPSILON, MOMENTUM = 1e-3, 0.9


def _layer(fused, shape, dtype=None, **kwargs):
    layer = SyncBatchNormalization(fused=fused, momentum=MOMENTUM, epsilon=EPSILON, dtype=dtype, **kwargs)
    layer.build(shape)
    channels = shape[kwargs.get("axis", -1)]
    rng = np.random.default_rng(1)
    weights = {"gamma": rng.uniform(0.5, 1.5, channels), "beta": rng.normal(size=channels),
               "moving_mean": rng.normal(size=channels), "moving_variance": rng.uniform(0.5, 2.0, channels)}
    for variable in layer.weights:
        name = variable.path.split("/")[-1]
        if name in weights:  # renorm's own statistics keep their initial values
            variable.assign(weights[name].astype(variable.dtype))
    return layer, weights


def _train_call(layer, x, upstream):
    """(output, d⟨output, upstream⟩ / d(x, gamma, beta)) of one training call."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        objective = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    return y, tape.gradient(objective, [x, layer.gamma, layer.beta])


def _op_types(layer, x, training=True):
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(
        tf.TensorSpec(x.shape, x.dtype)).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (16, 7)])
def test_fused_training_equals_the_equations_and_keras(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    fused, weights = _layer(True, shape)
    plain, _ = _layer(False, shape)
    assert "FusedBatchNormV3" in _op_types(fused, tf.constant(x))
    assert "FusedBatchNormV3" not in _op_types(plain, tf.constant(x))

    axes = tuple(range(len(shape) - 1))
    mean, variance = x.astype("float64").mean(axes), x.astype("float64").var(axes)  # biased, as Keras
    normalized = (x - mean) / np.sqrt(variance + EPSILON)
    expected = weights["gamma"] * normalized + weights["beta"]
    y, gradients = _train_call(fused, x, upstream)
    y_plain, gradients_plain = _train_call(plain, x, upstream)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y.numpy(), y_plain.numpy(), rtol=1e-4, atol=1e-4)
    # d/dβ = Σ upstream; d/dγ = Σ upstream · x̂ (independent of the implementation)
    np.testing.assert_allclose(gradients[2].numpy(), upstream.sum(axes), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gradients[1].numpy(), (upstream * normalized).sum(axes), rtol=1e-3, atol=1e-3)
    for ours, keras_own in zip(gradients, gradients_plain):
        np.testing.assert_allclose(ours.numpy(), keras_own.numpy(), rtol=1e-3, atol=1e-4)
    # the moving statistics: momentum · old + (1 − momentum) · batch (biased variance)
    np.testing.assert_allclose(fused.moving_mean.numpy(), MOMENTUM * weights["moving_mean"] + (1 - MOMENTUM) * mean,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(),
                               MOMENTUM * weights["moving_variance"] + (1 - MOMENTUM) * variance, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-5)


def test_fused_training_under_xla_equals_keras():
    shape = (8, 4, 4, 6)
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape).astype("float32")
    fused, _ = _layer(True, shape)
    plain, _ = _layer(False, shape)
    y = tf.function(lambda t: fused(t, training=True), jit_compile=True)(x)
    np.testing.assert_allclose(y.numpy(), plain(x, training=True).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_half_precision_inputs_keep_float32_statistics(policy):
    shape = (8, 4, 4, 6)
    x = np.random.default_rng(3).normal(size=shape).astype("float32")
    fused, _ = _layer(True, shape, dtype=policy)
    plain, _ = _layer(False, shape, dtype=policy)
    half = tf.cast(x, fused.compute_dtype)
    y = fused(half, training=True)
    assert y.dtype == fused.compute_dtype and fused.moving_mean.dtype == tf.float32
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), tf.cast(plain(half, training=True), tf.float32).numpy(),
                               rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-5, atol=1e-6)


def test_keras_path_where_the_fused_kernel_does_not_apply():
    shape = (4, 3, 3, 2)
    x32 = tf.zeros(shape, tf.float32)
    float64_layer, _ = _layer(True, shape, dtype="float64")
    assert "FusedBatchNormV3" not in _op_types(float64_layer, tf.zeros(shape, tf.float64))  # no float64 kernel
    layer, _ = _layer(True, shape)
    assert "FusedBatchNormV3" not in _op_types(layer, x32, training=False)  # inference: moving statistics
    channels_first, _ = _layer(True, shape, axis=1)
    assert "FusedBatchNormV3" not in _op_types(channels_first, x32)
    renorm, _ = _layer(True, shape, renorm=True)
    assert "FusedBatchNormV3" not in _op_types(renorm, x32)


def test_synchronized_over_two_replicas_keeps_the_two_pass_statistics(two_replicas):
    strategy = two_replicas
    shape = (4, 3, 3, 2)
    with strategy.scope():
        layer, _ = _layer(True, shape, synchronized=True)
    seen = []

    def step(x):
        seen.append(layer._fusable(x, True, None))
        return layer(x, training=True)

    strategy.run(tf.function(step), (tf.zeros(shape),))
    assert seen and not any(seen)


def test_fused_round_trips_through_get_config():
    layer = SyncBatchNormalization(fused=False, synchronized=True, momentum=0.8)
    clone = SyncBatchNormalization.from_config(layer.get_config())
    assert clone.fused is False and clone.synchronized and clone.momentum == 0.8
    assert SyncBatchNormalization().get_config()["fused"] is True
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)).fused is False
