"""A step with non-finite outputs or gradients leaves every variable exactly as it was: weights,
optimizer slots and iteration count, batch-norm statistics, MoCo's key encoder and queue."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import autotune
from tests.methods.helpers import METHODS, build, one_step, tiny_encoder, views


def _state(model):
    return {v.path: v.numpy().copy() for v in model.variables + model.optimizer.variables}


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"], indirect=True)
@pytest.mark.parametrize("amcl_on", [True, False], ids=["amcl", "plain"])
@pytest.mark.parametrize("method", METHODS)
# (replicas, poisoned view): view 1 only, view 2 only, and one replica's shard under 2 replicas
@pytest.mark.parametrize("replicas,poisoned_view", [(1, 1), (1, 2), (2, 2)], ids=["1-1", "1-2", "2-2"])
def test_a_nan_batch_changes_no_variable(method, amcl_on, policy, replicas, poisoned_view, two_replicas):
    """One NaN pixel in view 1 or in view 2 only (MoCo: view 2 goes through the momentum encoder alone, so the
    NaN is in the keys: they must not enter the queue nor move the key encoder); with 2 replicas the pixel is in
    the last image of view 2, i.e. in one replica's shard (the harder case for MoCo's keys). Every method, with and without AMCL, in float32 and in
    mixed_float16 (where the loss-scale optimizer's scale must not move either)."""
    strategy = two_replicas if replicas == 2 else None
    model = build(method, amcl_on, strategy)
    view1, view2 = views()
    one_step(model, view1, view2)  # a good step first: slots, BN statistics and queue hold real values
    for _ in range(30):  # mixed_float16: the first steps may overflow at the initial loss scale (its own skip)
        if int(model.optimizer.iterations.numpy()) >= 1:
            break
        one_step(model, view1, view2)
    iterations = int(model.optimizer.iterations.numpy())
    assert iterations >= 1
    before = _state(model)
    poisoned = (view1 if poisoned_view == 1 else view2).copy()
    poisoned[-1, 0, 0, 0] = np.nan  # one pixel of one image
    logs = one_step(model, *((poisoned, view2) if poisoned_view == 1 else (view1, poisoned)))
    assert logs["skipped"] == [1.0]  # counted once, whatever the number of replicas
    assert np.isnan(logs["loss"][0])  # the epoch's only step was skipped: it has no mean loss
    after = _state(model)
    assert after.keys() == before.keys()
    changed = [path for path in before if not np.array_equal(before[path], after[path], equal_nan=True)]
    assert changed == []
    assert int(model.optimizer.iterations.numpy()) == iterations
    # and the model trains on from there
    logs = one_step(model, view1, view2)
    assert np.isfinite(logs["loss"][0]) and logs["skipped"] == [0.0]
    assert int(model.optimizer.iterations.numpy()) == iterations + 1
    moved = [path for path, value in _state(model).items() if not np.array_equal(value, before[path])]
    assert len(moved) > 10


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"], indirect=True)
@pytest.mark.parametrize("amcl_on", [True, False], ids=["amcl", "plain"])
@pytest.mark.parametrize("method", METHODS)
def test_a_head_that_overflows_on_finite_input_is_skipped_too(method, amcl_on, policy):
    """Finite images, one head's weights so large that its outputs overflow to inf (the loss through an
    extreme value): the step is skipped the same way (the variables the test did not set are unchanged) — under
    mixed_float16 too, where it is the guard's skip, not the loss-scale optimizer's (its scale does not move)."""
    model = build(method, amcl_on)
    view1, view2 = views()
    one_step(model, view1, view2)
    before = _state(model)
    kernel = model.projector.heads[1].trainable_variables[0]
    kernel.assign(tf.fill(kernel.shape, 3e38))  # head 1's outputs overflow to inf
    before[kernel.path] = kernel.numpy().copy()
    logs = one_step(model, view1, view2)
    assert logs["skipped"] == [1.0] and np.isnan(logs["loss"][0])
    after = _state(model)
    assert [p for p in before if not np.array_equal(before[p], after[p], equal_nan=True)] == []


def _steps(model, batches):
    history = model.fit(tf.data.Dataset.from_tensor_slices(tuple(np.stack(b) for b in zip(*batches))),
                        epochs=1, verbose=0, shuffle=False)
    return history.history


@pytest.mark.parametrize("method", METHODS)
def test_a_skipped_step_is_counted_and_left_out_of_the_epoch_mean(method):
    """An epoch of (good, NaN, good) batches ends where (good, good) does (up to round-off) — same weights and mean loss —
    and reports one skipped step."""
    view1, view2 = views()
    other1, other2 = views(seed=1)
    poisoned = view1.copy()
    poisoned[0, 0, 0, 0] = np.nan
    with_nan, reference = build(method, True), build(method, True)
    reference.set_weights(with_nan.get_weights())
    logs = _steps(with_nan, [(view1, view2), (poisoned, view2), (other1, other2)])
    expected = _steps(reference, [(view1, view2), (other1, other2)])
    assert logs["skipped"] == [1.0] and expected["skipped"] == [0.0]
    # two models on the same steps: equal up to float32 round-off (a kernel may split a reduction differently on
    # another CPU); a step that had not been skipped would move them by far more at learning rate 0.5
    assert np.isfinite(logs["loss"][0])
    np.testing.assert_allclose(logs["loss"][0], expected["loss"][0], rtol=1e-5)
    for name in [n for n in expected if n.startswith("tau_")]:
        np.testing.assert_allclose(logs[name][0], expected[name][0], rtol=1e-5, err_msg=name)
    for a, b in zip(with_nan.weights, reference.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


_NAN_GRADIENT = tf.Variable(False, trainable=False)  # outside every model: switching it changes no model variable


@keras.saving.register_keras_serializable("tests")
class NaNGradientWhenSwitchedOn(keras.layers.Layer):
    """The identity, whose gradient is NaN while `_NAN_GRADIENT` is on: finite outputs, non-finite gradients."""

    def call(self, x):
        @tf.custom_gradient
        def identity(x):
            return tf.identity(x), lambda dy: tf.where(_NAN_GRADIENT, tf.fill(tf.shape(dy), tf.constant(np.nan, dy.dtype)), dy)

        return identity(x)


def _encoder_with_nan_gradient():
    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, NaNGradientWhenSwitchedOn()(tiny_encoder()(inputs)))


@pytest.mark.parametrize("method", METHODS)
def test_under_mixed_float16_the_loss_scale_skip_is_the_steps_and_a_nan_gradient_is_caught(method, tmp_path):
    """mixed_float16: a non-finite gradient at a normal loss scale is the loss-scale optimizer's skip — it halves
    its scale, and the rest of the step (batch-norm statistics, MoCo's key encoder and queue) is skipped with it;
    below `MIN_LOSS_SCALE` no overflow explains it: the step is skipped whole, counted, and the guard stops there."""
    from amcl_keras.callbacks import NonFiniteLossGuard, NonFiniteLossError
    from amcl_keras.methods.base import MIN_LOSS_SCALE

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build(method, True, encoder=_encoder_with_nan_gradient)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        view1, view2 = views()
        one_step(model, view1, view2)
        _NAN_GRADIENT.assign(True)
        scale = float(model.optimizer.dynamic_scale.numpy())
        before = {path: value for path, value in _state(model).items() if "dynamic_scale" not in path and "step_counter" not in path}
        logs = one_step(model, view1, view2)
        assert logs["skipped"] == [0.0] and np.isfinite(logs["loss"][0])  # the loss-scale optimizer's own skip
        assert float(model.optimizer.dynamic_scale.numpy()) == scale / 2
        after = _state(model)
        assert [path for path in before if not np.array_equal(before[path], after[path])] == []
        model.optimizer.dynamic_scale.assign(MIN_LOSS_SCALE / 2)
        before = _state(model)
        logs = one_step(model, view1, view2)
        assert logs["skipped"] == [1.0]
        after = _state(model)
        assert [path for path in before if not np.array_equal(before[path], after[path], equal_nan=True)] == []
        with pytest.raises(NonFiniteLossError, match="non-finite gradients in encoder"):
            model.fit(tf.data.Dataset.from_tensors((view1, view2)).repeat(2), epochs=1, verbose=0,
                      callbacks=[NonFiniteLossGuard()])
    finally:
        _NAN_GRADIENT.assign(False)
        keras.config.set_dtype_policy(previous)


@pytest.mark.skipif(not autotune.native_bfloat16()[0], reason="no native bfloat16 kernels on this machine")
@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("amcl_on", [True, False], ids=["amcl", "plain"])
@pytest.mark.parametrize("poisoned_view", [1, 2])
def test_under_mixed_bfloat16_a_nan_batch_changes_no_variable_either(amcl_on, policy, poisoned_view):
    """What `train.mixed_precision: auto` may choose on a CPU with native bfloat16: the same guarantee (no loss
    scaling there: the guard's own skip), for the default method."""
    from tests.methods.helpers import DEFAULT_METHOD

    test_a_nan_batch_changes_no_variable(DEFAULT_METHOD, amcl_on, policy, 1, poisoned_view, None)
