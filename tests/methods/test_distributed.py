"""Every method, with and without AMCL: one step on 2 replicas equals one device on the global batch."""

import numpy as np
import pytest
import tensorflow as tf

from tests.methods.helpers import METHODS, build, one_step, one_with_and_one_without_negatives, views

# (method, options): every registered method with each encoder_forward, with its own defaults otherwise (MoCo:
# the asymmetric form, where encoder_forward changes nothing; tests/methods/test_moco.py adds its symmetric form).
FORMS = [(method, {"encoder_forward": forward}) for method in METHODS for forward in ("per_view", "concatenated")]

# The AMCL case of each method with both views in one batch stays in the fast lane (`pytest -m "not slow"`). The
# baseline is compared with the per-view forward only: its loss is the part AMCL replaces, and the concatenated
# forward is covered by the AMCL case (3 of the 4 combinations per method, for CI time).
CASES = [
    pytest.param(method, options, amcl_on, id=f"{method}-{'-'.join(options.values())}-{'amcl' if amcl_on else 'baseline'}",
                 marks=() if amcl_on and options["encoder_forward"] == "concatenated" else pytest.mark.slow)
    for method, options in FORMS for amcl_on in (True, False) if amcl_on or options["encoder_forward"] == "per_view"
]


@pytest.mark.parametrize("method,options,amcl_on", CASES)
def test_two_replicas_equal_one_device(method, options, amcl_on, two_replicas):
    check_two_replicas_equal_one_device(method, options, amcl_on, two_replicas)


def check_two_replicas_equal_one_device(method, options, amcl_on, two_replicas):
    """Loss, logged temperatures and every weight after one clipped SGD step (so the gradients), and every
    non-trainable variable (MoCo: the momentum encoder and the queue), match one device to 1e-5."""
    view1, view2 = views()
    single = build(method, amcl_on, **options)
    mirrored = build(method, amcl_on, two_replicas, **options)
    assert two_replicas.num_replicas_in_sync == 2
    before = [w.copy() for w in single.get_weights()]
    mirrored.set_weights(before)
    unclipped = build(method, amcl_on, clipnorm=None, **options)
    unclipped.set_weights(before)

    single_logs = one_step(single, view1, view2)
    mirrored_logs = one_step(mirrored, view1, view2)
    one_step(unclipped, view1, view2)

    for key in single_logs:
        np.testing.assert_allclose(mirrored_logs[key], single_logs[key], rtol=1e-5, atol=1e-6, err_msg=key)
    moved = 0
    for variable, b, s, m in zip(single.weights, before, single.get_weights(), mirrored.get_weights()):
        # 3e-5 of the variable's scale + 1e-6: float32 round-off differs with the CPU's kernels (AVX2-only oneDNN
        # paths gave 2.8e-6 on a SimSiam predictor bias of scale 0.17); the bugs this guards against are 1e-2 and up
        np.testing.assert_allclose(m, s, rtol=0, atol=3e-5 * np.abs(s).max() + 1e-6, err_msg=variable.path)
        moved += not np.allclose(b, s)
    assert moved > 10, "the step must change the weights for the comparison to mean anything"
    clipping_acted = any(not np.allclose(s, u) for s, u in zip(single.get_weights(), unclipped.get_weights()))
    assert clipping_acted, "global-norm clipping should act in this step, so that it is compared too"
    return single, mirrored


def test_augmentation_inside_the_step_under_two_replicas(two_replicas):
    """With `augmenter=` the model takes plain image batches and makes both views in the step;
    under MirroredStrategy each replica augments its own shard."""
    import keras

    import amcl_keras as amcl

    images = np.concatenate(views(), axis=0)  # 16 distinct 8×8 images
    with two_replicas.scope():
        model = amcl.SimCLR(
            amcl.encoders.small_convnet((8, 8, 1), width=4, synchronized_batch_norm=True), num_heads=2,
            projection_dim=8, hidden_dim=16, augmenter=amcl.augment.view_augmenter(8, 1, "ae"),
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1, global_clipnorm=1.0))
    history = model.fit(tf.data.Dataset.from_tensor_slices(images).batch(8, drop_remainder=True).repeat(2),
                        epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    clone = amcl.SimCLR.from_config(model.get_config())
    assert [layer.name for layer in clone.augmenter.layers] == ["a_random_resized_crop", "e_flip"]


@pytest.mark.parametrize("method", one_with_and_one_without_negatives())
def test_clipping_under_loss_scaling_on_two_replicas_equals_one_device(method, two_replicas):
    """With a LossScaleOptimizer the gradients are scaled: the global gradient is unscaled, clipped
    and scaled again, so 2 replicas take the same clipped step as one device (float32 compute, so
    the comparison is as tight as without loss scaling)."""
    import keras

    view1, view2 = views()

    def make(strategy=None, clipnorm=1.0):
        model = build(method, True, strategy)
        with (strategy or tf.distribute.get_strategy()).scope():
            model.compile(optimizer=keras.optimizers.LossScaleOptimizer(
                keras.optimizers.SGD(0.5, global_clipnorm=clipnorm)))
        return model

    single, mirrored, unclipped = make(), make(two_replicas), make(clipnorm=None)
    before = single.get_weights()
    mirrored.set_weights(before)
    unclipped.set_weights(before)
    for model in (single, mirrored, unclipped):
        one_step(model, view1, view2)
    assert int(single.optimizer.iterations.numpy()) == int(mirrored.optimizer.iterations.numpy()) == 1
    for variable, s, m in zip(single.weights, single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(m, s, rtol=0, atol=1e-5 * np.abs(s).max() + 1e-6, err_msg=variable.path)
    assert any(not np.allclose(s, u) for s, u in zip(single.get_weights(), unclipped.get_weights())), \
        "clipping must act in this step for the comparison to cover it"


@pytest.fixture
def float64_keras():
    """Keras layers created in this test compute in float64; floatx and the dtype policy are put back after."""
    import keras

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def _float64_resnet_step(encoder_name, strategy, synchronized=True):
    """A tiny AMCL-SimCLR on `encoder_name` (width 4, 8×8 images) in float64, compiled with plain SGD(1):
    one step's weight change is minus the gradient."""
    import keras

    import amcl_keras as amcl

    with strategy.scope():
        encoder = amcl.encoders.get(encoder_name, (8, 8, 1), width=4, synchronized_batch_norm=synchronized)
        loss = amcl.losses.AMCLNTXentLoss(8, beta=0.01, top_k=5, temperature_hidden_dim=8, dtype="float64")
        model = amcl.SimCLR(encoder, num_heads=2, projection_dim=8, hidden_dim=16, loss=loss)
        model.compile(optimizer=keras.optimizers.SGD(1.0))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("encoder_name", ["resnet18_cifar"])
def test_resnet_two_replicas_equal_one_device_in_float64(encoder_name, two_replicas, float64_keras):
    """The ResNets' 2-replica step equals one device's to 1e-9 in float64: loss, every gradient (relative
    to the largest gradient entry) and every batch-norm moving statistic (measured ~1e-14 / ~1e-12).
    In float32 the two differ (per variable, relative: up to ~1e-4 for ResNet-18, ~1e-1 for ResNet-50),
    but so does one device on the same batch in another order, and each float32 run is as far from the
    float64 step: a tiny-batch deep BN network amplifies float32 round-off (and a ReLU input near 0 can
    change sign). ResNet-50 is built from the same batch-norm and residual pieces: its layers are checked in
    test_every_batch_norm_of_resnet50_follows_the_synchronized_setting (the float64 step took 100-170 s of CI). So test_two_replicas_equal_one_device compares small_convnet in float32 and these
    encoders are compared here, where a real difference (an unsynchronized layer, a per-replica
    statistic, a wrongly aggregated gradient) still shows: with per-replica batch statistics
    (`synchronized_batch_norm=False`) the losses differ by ~0.9 relative, and with only the residual
    projections' batch norm per replica by ~0.5."""
    view1, view2 = (view.astype("float64") for view in views())
    steps = {}
    for synchronized in (True, False) if encoder_name == "resnet18_cifar" else (True,):  # control: once
        single = _float64_resnet_step(encoder_name, tf.distribute.get_strategy(), synchronized)
        mirrored = _float64_resnet_step(encoder_name, two_replicas, synchronized)
        assert single.weights[0].dtype == mirrored.weights[0].dtype == "float64"
        before = single.get_weights()
        mirrored.set_weights(before)
        steps[synchronized] = [
            (one_step(model, view1, view2)["loss"][0], [b - a for b, a in zip(before, model.get_weights())])
            for model in (single, mirrored)
        ]
    (single_loss, single_change), (mirrored_loss, mirrored_change) = steps[True]
    trainable = {id(v) for v in single.trainable_weights}
    scale = {kind: max(np.abs(c).max() for v, c in zip(single.weights, single_change) if (id(v) in trainable) == kind)
             for kind in (True, False)}  # gradients; moving statistics
    assert scale[True] > 0 and scale[False] > 0
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-9)
    for variable, s, m in zip(single.weights, single_change, mirrored_change):
        np.testing.assert_allclose(m, s, rtol=0, atol=1e-9 * scale[id(variable) in trainable], err_msg=variable.path)
    if False in steps:
        (single_loss, _), (mirrored_loss, _) = steps[False]
        assert abs(mirrored_loss - single_loss) > 1e-3 * abs(single_loss), "per-replica statistics must show"


def test_every_batch_norm_of_resnet50_follows_the_synchronized_setting():
    """ResNet-50 (bottleneck) has the 53 batch norms of torchvision's (stem 1, 16 blocks × 3, 4 projections),
    every one synchronized over replicas when asked and none when not: the property the float64 comparison of
    ResNet-18 checks numerically (an unsynchronized layer changes the 2-replica step by ~0.5 relative)."""
    import keras

    import amcl_keras as amcl
    from amcl_keras.normalization import SyncBatchNormalization

    for synchronized in (True, False):
        encoder = amcl.encoders.get("resnet50_cifar", (8, 8, 1), width=4, synchronized_batch_norm=synchronized)
        norms = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(norms) == 53
        assert all(isinstance(n, SyncBatchNormalization) and n.synchronized is synchronized for n in norms)
