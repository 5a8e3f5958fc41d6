"""The built-in encoders: weight counts against torchvision's (an independent count) and feature sizes."""

import numpy as np
import pytest

import amcl_keras as amcl
from amcl_keras import config as config_lib


def _trainable(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


# torchvision's resnet18 / resnet50 have 11,689,512 / 25,557,032 parameters (BN running statistics are buffers, not
# parameters); without the 1000-way classifier (513,000 / 2,049,000) and with the CIFAR stem (a 3×3 conv, 1,728
# weights, instead of the 7×7 one, 9,408) that is 11,168,832 / 23,500,352 trainable weights.
@pytest.mark.parametrize("name,expected,features", [("resnet18_cifar", 11_168_832, 512),
                                                    ("resnet50_cifar", 23_500_352, 2048)])
def test_cifar_resnets_have_torchvisions_weight_count_and_feature_size(name, expected, features):
    encoder = amcl.encoders.get(name, (32, 32, 3))
    assert _trainable(encoder) == expected
    assert encoder.output.shape[-1] == features
    assert amcl.encoders.get(name, (16, 16, 3), width=8).output.shape[-1] == features // 8


def test_resnet50_cifar_is_selectable_in_the_config():
    assert config_lib.load(None, ["model.encoder=resnet50_cifar"]).model.encoder == "resnet50_cifar"


def test_two_pass_statistics_equal_one_device_where_the_one_pass_ones_do_not(two_replicas):
    """Per-channel mean 1e4, std 1: in float32 E[x²] ≈ 1e8 is spaced by 8, so Keras's synchronized
    E[x²] − E[x]² cannot hold a variance of 1 on any CPU; the two-pass SyncBatchNormalization keeps it
    (NumPy float64 reference on the same float32 inputs)."""
    import keras
    import tensorflow as tf

    from amcl_keras.normalization import SyncBatchNormalization

    x = (1e4 + np.random.default_rng(0).normal(size=(8, 4))).astype("float32")
    expected_var = x.astype(np.float64).var(axis=0)
    results = {}
    for cls in (SyncBatchNormalization, keras.layers.BatchNormalization):
        with two_replicas.scope():
            layer = cls(synchronized=True, momentum=0.0)
            layer.build((None, 4))
        dataset = two_replicas.experimental_distribute_dataset(tf.data.Dataset.from_tensors(x))
        two_replicas.run(lambda batch: layer(batch, training=True), args=(next(iter(dataset)),))
        results[cls.__name__] = layer.moving_variance.numpy()
    np.testing.assert_allclose(results["SyncBatchNormalization"], expected_var, rtol=1e-3)
    assert np.max(np.abs(results["BatchNormalization"] - expected_var) / expected_var) > 0.5


def test_two_pass_statistics_keep_float64(two_replicas):
    """A float64 layer's synchronized statistics are computed in float64 (not cast to float32): per-channel
    mean 1e8, std 1, where float32 is spaced by 8 and would lose the variance entirely."""
    import tensorflow as tf

    from amcl_keras.normalization import SyncBatchNormalization

    x = 1e8 + np.random.default_rng(0).normal(size=(8, 4))
    with two_replicas.scope():
        layer = SyncBatchNormalization(synchronized=True, momentum=0.0, dtype="float64")
        layer.build((None, 4))
    dataset = two_replicas.experimental_distribute_dataset(tf.data.Dataset.from_tensors(x))
    outputs = two_replicas.run(lambda batch: layer(batch, training=True), args=(next(iter(dataset)),))
    assert all(output.dtype == tf.float64 for output in two_replicas.experimental_local_results(outputs))
    np.testing.assert_allclose(layer.moving_mean.numpy(), x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(layer.moving_variance.numpy(), x.var(axis=0), rtol=1e-6)
