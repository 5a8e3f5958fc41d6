"""encoder_forward: each view through the encoder on its own ("per_view", the authors': batch-norm
statistics per view) or both views as one batch ("concatenated"). The heads' outputs that the loss
should see are computed here from the model's parts; the step's loss must match the chosen form and
differ from the other one (the encoder has batch norm, so the two forms give different features): each
method's test file checks its own loss (tests/methods/test_<method>.py, with `embed`)."""

import keras
import numpy as np
import pytest

from tests.methods.helpers import DEFAULT_METHOD, GLOBAL_BATCH, build, one_step, views


def embed(model, view1, view2, per_view):
    """The online encoder and heads in training mode: `(z1, z2)` per view or from one concatenated batch."""
    if per_view:
        return [model.projector(model.encoder(v, training=True), training=True).numpy() for v in (view1, view2)]
    z = model.projector(model.encoder(np.concatenate([view1, view2]), training=True), training=True).numpy()
    return z[:GLOBAL_BATCH], z[GLOBAL_BATCH:]


def test_default_is_per_view_and_a_bad_value_is_refused():
    model = build(DEFAULT_METHOD, False)
    assert model.encoder_forward == "per_view" and model.get_config()["encoder_forward"] == "per_view"
    with pytest.raises(ValueError, match="encoder_forward.*'per_view', 'concatenated'"):
        build(DEFAULT_METHOD, False, encoder_forward="both")


def test_per_view_updates_batch_norm_statistics_once_per_view():
    """Keras's moving mean after the step = two updates, with view 1's then view 2's batch mean
    (as PyTorch's encoder(x1), encoder(x2)); concatenated: one update with the mean of both."""
    view1, view2 = views(9)
    for form in ("per_view", "concatenated"):
        model = build(DEFAULT_METHOD, False, clipnorm=None, encoder_forward=form)
        norm = next(layer for layer in model.encoder.layers if isinstance(layer, keras.layers.BatchNormalization))
        probe = keras.Model(model.encoder.inputs, norm.input)  # what the first batch norm sees
        means = [probe(v).numpy().mean(axis=(0, 1, 2)) for v in (view1, view2)]
        m = norm.momentum  # moving_mean starts at 0: μ ← m·μ + (1 − m)·batch mean
        expected = m * (1 - m) * means[0] + (1 - m) * means[1] if form == "per_view" \
            else (1 - m) * 0.5 * (means[0] + means[1])
        one_step(model, view1, view2)
        np.testing.assert_allclose(norm.moving_mean.numpy(), expected, rtol=1e-4, atol=1e-6, err_msg=form)
