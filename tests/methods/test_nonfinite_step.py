"""A step with non-finite outputs or gradients leaves every variable exactly as it was: weights,
optimizer slots and iteration count, batch-norm statistics, MoCo's key encoder and queue."""

import numpy as np
import pytest
import tensorflow as tf

from tests.methods.helpers import METHODS, build, one_step, views


def _state(model):
    return {v.path: v.numpy().copy() for v in model.variables + model.optimizer.variables}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("poisoned_view", [1, 2])
def test_a_nan_batch_changes_no_variable(method, replicas, poisoned_view, two_replicas):
    """One NaN pixel in view 1 or in view 2 only (MoCo: view 2 goes through the momentum encoder alone, so the
    NaN is in the keys: they must not enter the queue nor move the key encoder); with 2 replicas the pixel is in
    the last image, i.e. in one replica's shard."""
    strategy = two_replicas if replicas == 2 else None
    model = build(method, True, strategy)
    view1, view2 = views()
    one_step(model, view1, view2)  # a good step first: slots, BN statistics and queue hold real values
    before = _state(model)
    poisoned = (view1 if poisoned_view == 1 else view2).copy()
    poisoned[-1, 0, 0, 0] = np.nan  # one pixel of one image
    logs = one_step(model, *((poisoned, view2) if poisoned_view == 1 else (view1, poisoned)))
    assert np.isnan(logs["loss"][0])
    after = _state(model)
    assert after.keys() == before.keys()
    changed = [path for path in before if not np.array_equal(before[path], after[path], equal_nan=True)]
    assert changed == []
    assert int(model.optimizer.iterations.numpy()) == 1
    # and the model trains on from there
    logs = one_step(model, view1, view2)
    assert np.isfinite(logs["loss"][0]) and int(model.optimizer.iterations.numpy()) == 2
    moved = [path for path, value in _state(model).items() if not np.array_equal(value, before[path])]
    assert len(moved) > 10


def test_a_head_that_overflows_on_finite_input_is_skipped_too():
    """Finite images, one head's weights so large that its outputs overflow to inf: the step is
    skipped the same way (the variables the test did not set are unchanged)."""
    model = build("simclr", True)
    view1, view2 = views()
    one_step(model, view1, view2)
    before = _state(model)
    kernel = model.projector.heads[1].trainable_variables[0]
    kernel.assign(tf.fill(kernel.shape, 3e38))  # head 1's outputs overflow to inf
    before[kernel.path] = kernel.numpy().copy()
    logs = one_step(model, view1, view2)
    assert np.isnan(logs["loss"][0])
    after = _state(model)
    assert [p for p in before if not np.array_equal(before[p], after[p], equal_nan=True)] == []
