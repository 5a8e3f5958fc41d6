import numpy as np
import pytest

import amcl_keras as amcl
from tests import reference
from tests.methods.helpers import GLOBAL_BATCH, build, one_step, views


def test_barlow_twins_step_loss_matches_numpy_on_the_model_embeddings():
    view1, view2 = views(6)
    model = build("barlow_twins", False, clipnorm=None)
    z = model.projector(model.encoder(np.concatenate([view1, view2]), training=True), training=True).numpy()
    expected = reference.barlow_twins(z[:GLOBAL_BATCH], z[GLOBAL_BATCH:], 5e-3)
    np.testing.assert_allclose(one_step(model, view1, view2)["loss"][0], expected, rtol=1e-5)


def test_amcl_barlow_twins_refuses_a_different_batch():
    model = build("barlow_twins", True)
    view1, view2 = views()
    with pytest.raises(ValueError, match=f"global batch of {GLOBAL_BATCH}.*global batch of 6"):
        one_step(model, view1[:6], view2[:6])


def test_amcl_barlow_twins_needs_the_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        amcl.BarlowTwins(amcl.encoders.small_convnet((8, 8, 1), width=4), projection_dim=8, hidden_dim=8)


def test_simsiam_step_loss_matches_numpy_and_has_one_predictor_per_head():
    view1, view2 = views(7)
    model = build("simsiam", True, clipnorm=None)
    assert len(model.predictor.heads) == 2
    z = model.projector(model.encoder(np.concatenate([view1, view2]), training=True), training=True)
    p = model.predictor(z, training=True).numpy()
    z = z.numpy()
    b = GLOBAL_BATCH
    weights = model.contrastive_loss.temperature.get_weights()
    expected = reference.simsiam(p[:b], p[b:], z[:b], z[b:], weights, 0.01)
    np.testing.assert_allclose(one_step(model, view1, view2)["loss"][0], expected, rtol=1e-5, atol=1e-6)
    assert "tau_neg_0" not in [m.name for m in model.metrics]


@pytest.mark.parametrize("method", ["simclr", "moco", "barlow_twins", "simsiam"])
def test_model_round_trip_through_get_config(method, tmp_path):
    model = build(method, True)
    config = model.get_config()
    for key in ("encoder", "amcl", "loss", *type(model).config_args):
        assert key in config
    clone = type(model).from_config(config)
    assert clone.get_config()["loss"] == config["loss"]
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    clone.load_weights(path)
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)
