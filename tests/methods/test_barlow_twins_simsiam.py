import numpy as np
import pytest

import amcl_keras as amcl
from amcl_keras import config as config_lib, registry
from tests import reference
from tests.methods.helpers import GLOBAL_BATCH, METHODS, SMALL_MODEL, build, one_step, views
from tests.methods.test_encoder_forward import embed


@pytest.mark.parametrize("encoder_forward", ["per_view", "concatenated"])
def test_barlow_twins_step_loss_matches_numpy_on_the_model_embeddings(encoder_forward):
    """Per view, the heads' batch norms (hidden and output) see one view at a time."""
    view1, view2 = views(6)
    model = build("barlow_twins", False, clipnorm=None, encoder_forward=encoder_forward)
    expected = {form: reference.barlow_twins(*embed(model, view1, view2, form == "per_view"), 5e-3)
                for form in ("per_view", "concatenated")}
    loss = one_step(model, view1, view2)["loss"][0]
    np.testing.assert_allclose(loss, expected[encoder_forward], rtol=1e-5)
    other = expected["concatenated" if encoder_forward == "per_view" else "per_view"]
    assert abs(loss - other) > 1e-3 * abs(other), (loss, other)


def test_amcl_barlow_twins_refuses_a_different_batch():
    model = build("barlow_twins", True)
    view1, view2 = views()
    with pytest.raises(ValueError, match=f"global batch of {GLOBAL_BATCH}.*global batch of 6"):
        one_step(model, view1[:6], view2[:6])


def test_amcl_barlow_twins_needs_the_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        amcl.BarlowTwins(amcl.encoders.small_convnet((8, 8, 1), width=4), projection_dim=8, hidden_dim=8)


@pytest.mark.parametrize("encoder_forward", ["per_view", "concatenated"])
def test_simsiam_step_loss_matches_numpy_and_has_one_predictor_per_head(encoder_forward):
    """Per view, the predictor (with batch norm) also sees one view at a time."""
    view1, view2 = views(7)
    model = build("simsiam", True, clipnorm=None, encoder_forward=encoder_forward)
    assert len(model.predictor.heads) == 2
    weights = model.contrastive_loss.temperature.get_weights()
    expected = {}
    for form in ("per_view", "concatenated"):
        z1, z2 = embed(model, view1, view2, form == "per_view")
        if form == "per_view":
            p1, p2 = (model.predictor(z, training=True).numpy() for z in (z1, z2))
        else:
            p = model.predictor(np.concatenate([z1, z2]), training=True).numpy()
            p1, p2 = p[:GLOBAL_BATCH], p[GLOBAL_BATCH:]
        expected[form] = reference.simsiam(p1, p2, z1, z2, weights, 0.01, t_min=SMALL_MODEL["temperature_min"])
    loss = one_step(model, view1, view2)["loss"][0]
    np.testing.assert_allclose(loss, expected[encoder_forward], rtol=1e-5, atol=1e-6)
    other = expected["concatenated" if encoder_forward == "per_view" else "per_view"]
    assert abs(loss - other) > 1e-3 * abs(other), (loss, other)
    assert "tau_neg_0" not in [m.name for m in model.metrics]


@pytest.mark.parametrize("method", ["barlow_twins", "simsiam"])
def test_projector_output_bn_standardises_the_heads_by_default(method):
    """The authors' heads end in BatchNorm1d(affine=False): z per view has channel mean 0, variance 1."""
    view1, _ = views(10)
    model = build(method, True)
    assert model.projector_output_bn and model.get_config()["projector_output_bn"] is True
    z = model.projector(model.encoder(view1, training=True), training=True).numpy().astype(np.float64)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.var(0), 1.0, rtol=1e-2)  # batch of 8: var/(var + 1e-5)
    assert all(head.blocks[-1].trainable_weights == [] for head in model.projector.heads)
    off = build(method, True, projector_output_bn=False)
    assert all(head.blocks[-1].name == "output" for head in off.projector.heads)
    z = off.projector(off.encoder(view1, training=True), training=True).numpy()
    assert np.abs(z.var(0) - 1.0).max() > 0.1
    assert type(off).from_config(off.get_config()).projector_output_bn is False


@pytest.mark.parametrize("method", METHODS)
def test_model_round_trip_through_get_config(method, tmp_path):
    own = registry.method(method).setting_names()  # the non-default forms of the settings the method has
    options = {key: value for key, value in {"moco_form": "symmetric", "projector_output_bn": False}.items() if key in own}
    model = build(method, True, encoder_forward="concatenated", **options)  # the non-default forms
    config = model.get_config()
    for key in ("encoder", "amcl", "loss", "encoder_forward", *type(model).config_args):
        assert key in config
    clone = type(model).from_config(config)
    assert clone.get_config()["loss"] == config["loss"]
    assert clone.encoder_forward == "concatenated" and all(getattr(clone, k) == v for k, v in options.items())
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    clone.load_weights(path)
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method,learning_rate", [("barlow_twins", 0.11), ("simsiam", 0.05)])
def test_barlow_twins_and_simsiam_declare_their_validated_learning_rates(method, learning_rate):
    """What `amcl train --method <method>` trains with when the config leaves train.learning_rate open."""
    assert registry.method(method).learning_rate == learning_rate


def test_pair_statistics_of_barlow_twins_are_channels_and_simsiam_has_no_negatives():
    """(tests/test_monitoring.py checks the default method's pairs against NumPy.)"""
    view1, view2 = views()
    # Barlow Twins: pairs of channels; the positives are the cross-correlation diagonal
    barlow = build("barlow_twins", True)
    stats = barlow.pair_statistics(view1, view2)
    z = np.asarray(barlow.projector(barlow.encoder(np.concatenate([view1, view2]), training=False), training=False))
    for head in range(2):
        a, c = z[:8, head].astype(np.float64), z[8:, head].astype(np.float64)
        standard = lambda x: (x - x.mean(0)) / (x.std(0, ddof=1) + 1e-9)  # noqa: E731
        correlation = standard(a).T @ standard(c) / 8
        np.testing.assert_allclose(stats["sim_pos"][head], np.diag(correlation), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stats["sim_neg"][head], correlation[~np.eye(8, dtype=bool)], rtol=1e-4, atol=1e-5)
    assert stats["tau_neg"].shape == (2, 56)
    simsiam = build("simsiam", True).pair_statistics(view1, view2)
    assert set(simsiam) == {"sim_pos", "sim_neg", "tau_pos"}  # no negatives in SimSiam's loss


# --- Barlow Twins' and SimSiam's settings in the config -----------------------------------------------------
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.projector_output_bn=true"], "model.projector_output_bn is a setting of barlow_twins and simsiam"),
        (["model.method=simsiam", "model.projector_output_bn=1"], "model.projector_output_bn must be true or false"),
        (["model.method=barlow_twins", "model.lambda_=-1.0"], "model.lambda_=-1.0 is out of range"),
        (["model.method=simsiam", "model.predictor_hidden_dim=0"], "model.predictor_hidden_dim=0 is out of range"),
    ],
)
def test_bad_barlow_twins_and_simsiam_settings_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load(None, overrides)
