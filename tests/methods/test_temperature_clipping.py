"""`temperature_clipping`: with "separate", the temperature network φ's gradient and every other weight's are clipped
by two global norms (each to the optimizer's `global_clipnorm`); with "joint" (the default) by one. Checked for every
registered method against the update computed by hand from the same batch's gradient, on one device and on two
replicas."""

import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import config as config_lib, train
from tests.methods.helpers import METHODS, build, one_with_and_one_without_negatives, views

CLIPNORM = 1e-3  # small enough that both groups are clipped
LEARNING_RATE = 0.5


def _gradients(model, view1, view2):
    """The step's gradient for every trainable variable, as train_step computes it (one device)."""
    with tf.GradientTape() as tape:
        _, z1, z2 = model.embed_views(view1, view2 if model.embeds_both_views else None)
        loss, _, _ = model.compute_loss_and_stats(z1, z2, (view1, view2))
    return [np.asarray(g) for g in tape.gradient(loss, model.trainable_variables)]


def _clip(gradients, norm):
    total = np.sqrt(sum(float(np.sum(np.square(g.astype(np.float64)))) for g in gradients))
    return [g * min(1.0, norm / total) for g in gradients]


def _model(method, clipping, strategy=None):
    model = build(method, True, strategy=strategy, clipnorm=CLIPNORM, lr=LEARNING_RATE, temperature_clipping=clipping)
    assert model.temperature_clipping == clipping
    return model


# "separate" for every method; "joint" (the optimizer's own clipping, unchanged by this option) once, as the contrast
@pytest.mark.parametrize("method,clipping", [(m, "separate") for m in METHODS] + [(METHODS[0], "joint")])
def test_one_step_moves_each_weight_by_its_groups_clipped_gradient(method, clipping):
    view1, view2 = views()
    model = _model(method, clipping)
    probe = _model(method, clipping)
    probe.set_weights(model.get_weights())
    gradients = _gradients(probe, tf.constant(view1), tf.constant(view2))
    phi = {id(v) for v in model.contrastive_loss.temperature.trainable_variables}
    in_phi = [id(v) in phi for v in model.trainable_variables]
    assert any(in_phi) and not all(in_phi)
    if clipping == "joint":
        expected = _clip(gradients, CLIPNORM)
    else:
        groups = {flag: iter(_clip([g for g, p in zip(gradients, in_phi) if p is flag], CLIPNORM)) for flag in (True, False)}
        expected = [next(groups[p]) for p in in_phi]
    before = [np.asarray(v) for v in model.trainable_variables]
    model.fit(tf.data.Dataset.from_tensors((view1, view2)), epochs=1, verbose=0, shuffle=False)
    for variable, b, g in zip(model.trainable_variables, before, expected):
        np.testing.assert_allclose(np.asarray(variable), b - LEARNING_RATE * g, rtol=1e-4,
                                   atol=1e-4 * LEARNING_RATE * CLIPNORM, err_msg=variable.path)
    # the optimizer's own setting is untouched (it was switched off only while the step was traced)
    assert model.optimizer.global_clipnorm == CLIPNORM


@pytest.mark.slow
@pytest.mark.parametrize("method", one_with_and_one_without_negatives())  # the same code path for every method
def test_separate_clipping_on_two_replicas_equals_one_device(method, two_replicas):
    view1, view2 = views()
    single, mirrored = _model(method, "separate"), _model(method, "separate", two_replicas)
    mirrored.set_weights(single.get_weights())
    for model in (single, mirrored):
        model.fit(tf.data.Dataset.from_tensors((view1, view2)), epochs=1, verbose=0, shuffle=False)
    for variable, s, m in zip(single.weights, single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(m, s, rtol=0, atol=1e-5 * np.abs(s).max() + 1e-6, err_msg=variable.path)


def test_the_config_setting_reaches_the_model_and_round_trips():
    config = config_lib.load(None, ["model.temperature_clipping=separate", "model.encoder_width=4",
                                    "model.projection_dim=8", "model.hidden_dim=16"])
    model = train.build_model(config, (28, 28, 1))
    assert model.temperature_clipping == "separate"
    assert type(model).from_config(model.get_config()).temperature_clipping == "separate"
    with pytest.raises(ValueError, match="`temperature_clipping` must be one of"):
        type(model).from_config({**model.get_config(), "temperature_clipping": "both"})


@pytest.mark.parametrize("method", METHODS)
def test_the_python_constructor_defaults_to_the_methods_validated_setting(method):
    """`BarlowTwins(encoder, ...)` built from Python clips as `amcl train` does: the constructor's default is the
    settings dataclass's value (Barlow Twins: "separate", docs/METHOD.md §10; the others: "joint")."""
    import inspect

    from amcl_keras import registry
    from amcl_keras.methods.base import ContrastiveTrainer

    spec = registry.method(method)
    own = inspect.signature(spec.model.__init__).parameters.get("temperature_clipping")
    default = (own or inspect.signature(ContrastiveTrainer.__init__).parameters["temperature_clipping"]).default
    assert default == spec.settings.temperature_clipping == config_lib.load(None, [f"model.method={method}"]).model.temperature_clipping
