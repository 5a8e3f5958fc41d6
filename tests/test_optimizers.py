"""CoupledWeightDecaySGD against NumPy transcriptions of PyTorch's and Keras's SGD updates."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import config as config_lib
from amcl_keras.optimizers import CoupledWeightDecaySGD
from amcl_keras.train import build_optimizer
from tests.methods import helpers

W0 = np.array([1.0, -2.0, 0.5, 3.0], "float32")
GRADIENTS = [np.array(g, "float32") for g in ([0.3, -0.1, 0.2, 0.0], [0.1, 0.4, -0.3, 0.2], [-0.2, 0.1, 0.0, 0.5])]


def pytorch_sgd(w, gradients, learning_rates, momentum, weight_decay, nesterov=False):
    """torch.optim.SGD.step (dampening 0): g += wd·w; buf = g on the first step, else m·buf + g;
    nesterov: g += m·buf, else g = buf; w -= lr·g."""
    w, buffer = w.astype(np.float64), None
    for g, lr in zip(gradients, learning_rates):
        g = g + weight_decay * w
        buffer = g.copy() if buffer is None else momentum * buffer + g
        w = w - lr * (g + momentum * buffer if nesterov else buffer)
    return w


def keras_decoupled_sgd(w, gradients, learning_rates, momentum, weight_decay):
    """keras.optimizers.SGD(weight_decay=wd): w -= lr·wd·w, then v = m·v − lr·g; w += v."""
    w, velocity = w.astype(np.float64), np.zeros_like(w, np.float64)
    for g, lr in zip(gradients, learning_rates):
        w = w - lr * weight_decay * w
        velocity = momentum * velocity - lr * g
        w = w + velocity
    return w


def _run(optimizer, gradients=GRADIENTS, scale=1.0):
    variable = keras.Variable(W0)
    for g in gradients:
        optimizer.apply([tf.constant(g * scale)], [variable])
    return variable.numpy()


@pytest.mark.parametrize("schedule,nesterov", [(False, False), (True, False), (False, True)],
                         ids=["constant-lr", "cosine-lr", "nesterov"])
def test_three_steps_equal_pytorch_sgd_and_differ_from_keras_decoupled(schedule, nesterov):
    lr, momentum, weight_decay = 0.1, 0.9, 0.05
    learning_rate = keras.optimizers.schedules.CosineDecay(lr, decay_steps=4) if schedule else lr
    rates = [float(learning_rate(step)) if schedule else lr for step in range(3)]
    coupled = _run(CoupledWeightDecaySGD(learning_rate, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                         global_clipnorm=None))
    expected = pytorch_sgd(W0, GRADIENTS, rates, momentum, weight_decay, nesterov)
    np.testing.assert_allclose(coupled, expected, rtol=1e-6, atol=1e-7)
    if not nesterov:
        decoupled = _run(keras.optimizers.SGD(learning_rate, momentum=momentum, weight_decay=weight_decay))
        np.testing.assert_allclose(decoupled, keras_decoupled_sgd(W0, GRADIENTS, rates, momentum, weight_decay),
                                   rtol=1e-6, atol=1e-7)
        # the coupled decay goes through the momentum: after 3 steps it has pulled w further toward 0
        assert np.abs(coupled - decoupled).max() > 1e-3
        assert np.linalg.norm(coupled) < np.linalg.norm(decoupled)


def test_without_momentum_or_decay_it_is_plain_sgd():
    plain = _run(CoupledWeightDecaySGD(0.1, momentum=0.0, weight_decay=0.0, global_clipnorm=None))
    np.testing.assert_allclose(plain, W0 - 0.1 * sum(GRADIENTS), rtol=1e-6)
    no_momentum = _run(CoupledWeightDecaySGD(0.1, momentum=0.0, weight_decay=0.05, global_clipnorm=None))
    np.testing.assert_allclose(no_momentum, pytorch_sgd(W0, GRADIENTS, [0.1] * 3, 0.0, 0.05), rtol=1e-6)


def test_xla_compiled_steps_equal_the_eager_ones():
    optimizer = CoupledWeightDecaySGD(0.1, momentum=0.9, weight_decay=0.05, global_clipnorm=None)
    variable = keras.Variable(W0)
    optimizer.build([variable])
    step = tf.function(lambda g: optimizer.apply([g], [variable]), jit_compile=True)
    for g in GRADIENTS:
        step(tf.constant(g))
    np.testing.assert_allclose(variable.numpy(), pytorch_sgd(W0, GRADIENTS, [0.1] * 3, 0.9, 0.05), rtol=1e-6)


def test_clipping_acts_on_the_gradient_before_the_decay_is_added():
    """The authors clip (clip_grad_norm_) and then step (which adds wd·w): the decay is not clipped."""
    big = [g * 100.0 for g in GRADIENTS]
    clipped = [g / max(1.0, np.linalg.norm(g)) for g in big]
    result = _run(CoupledWeightDecaySGD(0.1, momentum=0.9, weight_decay=0.05, global_clipnorm=1.0), big)
    np.testing.assert_allclose(result, pytorch_sgd(W0, clipped, [0.1] * 3, 0.9, 0.05), rtol=1e-5, atol=1e-6)


def test_excluded_variables_get_no_decay():
    optimizer = CoupledWeightDecaySGD(0.1, momentum=0.9, weight_decay=0.05, global_clipnorm=None)
    variable = keras.Variable(W0, name="bias")
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    for g in GRADIENTS:
        optimizer.apply([tf.constant(g)], [variable])
    np.testing.assert_allclose(variable.numpy(), pytorch_sgd(W0, GRADIENTS, [0.1] * 3, 0.9, 0.0), rtol=1e-6)


def test_inside_a_loss_scale_optimizer_it_steps_on_the_unscaled_gradient():
    inner = CoupledWeightDecaySGD(0.1, momentum=0.9, weight_decay=0.05, global_clipnorm=None)
    wrapped = keras.optimizers.LossScaleOptimizer(inner, initial_scale=64.0, dynamic_growth_steps=1000)
    result = _run(wrapped, scale=64.0)  # LossScaleOptimizer.apply takes scaled gradients
    np.testing.assert_allclose(result, pytorch_sgd(W0, GRADIENTS, [0.1] * 3, 0.9, 0.05), rtol=1e-5, atol=1e-6)


def test_round_trip_through_get_config_and_the_registry():
    schedule = keras.optimizers.schedules.CosineDecay(0.06, decay_steps=100)
    optimizer = CoupledWeightDecaySGD(schedule, momentum=0.9, nesterov=True, weight_decay=5e-4, global_clipnorm=1.0)
    config = optimizer.get_config()
    without_schedule = lambda c: {k: v for k, v in c.items() if k != "learning_rate"}  # noqa: E731
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))  # through the registry
    for clone in (CoupledWeightDecaySGD.from_config(config), revived):
        assert type(clone) is CoupledWeightDecaySGD
        assert without_schedule(clone.get_config()) == without_schedule(config)
        assert type(clone._learning_rate) is type(schedule) and clone._learning_rate.get_config() == schedule.get_config()
    assert (revived.momentum, revived.nesterov, revived.weight_decay, revived.global_clipnorm) == (0.9, True, 5e-4, 1.0)


@pytest.mark.parametrize("mode,expected", [("coupled", CoupledWeightDecaySGD), ("decoupled", keras.optimizers.SGD)])
def test_build_optimizer_follows_weight_decay_mode(mode, expected):
    config = config_lib.load(None, [f"train.weight_decay_mode={mode}", "train.weight_decay=1.0e-3"])
    optimizer = build_optimizer(config, total_steps=50)
    assert type(optimizer) is expected
    assert (optimizer.weight_decay, optimizer.momentum, optimizer.global_clipnorm) == (1e-3, 0.9, 1.0)
    assert isinstance(optimizer._learning_rate, keras.optimizers.schedules.CosineDecay)


@pytest.mark.slow
def test_two_replicas_equal_one_device_with_coupled_decay(two_replicas):
    """Clipped global gradient + coupled decay + momentum over 2 steps: the decay is added once,
    to the summed gradient (the trainer's global clipping reads the optimizer's global_clipnorm)."""
    view1, view2 = helpers.views()

    def compiled(strategy, weight_decay):
        model = helpers.build(helpers.DEFAULT_METHOD, True, strategy)
        with (strategy or tf.distribute.get_strategy()).scope():
            model.compile(optimizer=CoupledWeightDecaySGD(0.5, momentum=0.9, weight_decay=weight_decay,
                                                          global_clipnorm=1.0))
        return model

    single, mirrored, undecayed = compiled(None, 0.05), compiled(two_replicas, 0.05), compiled(None, 0.0)
    mirrored.set_weights(single.get_weights())
    undecayed.set_weights(single.get_weights())
    for model in (single, mirrored, undecayed):
        model.fit(tf.data.Dataset.from_tensors((view1, view2)).repeat(2), epochs=1, verbose=0, shuffle=False)
    for variable, s, m in zip(single.weights, single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(m, s, rtol=0, atol=1e-5 * np.abs(s).max() + 1e-6, err_msg=variable.path)
    assert any(not np.allclose(s, u) for s, u in zip(single.get_weights(), undecayed.get_weights()))


def test_the_constructor_defaults_are_the_ones_the_readme_states():
    """README's API table writes the signature with its defaults; the class must have exactly those (and the same
    values as `amcl train`'s `train:` defaults), so the two cannot drift apart again."""
    import inspect
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    documented = re.search(r"`optimizers\.CoupledWeightDecaySGD\(learning_rate, ([^)]*)\)`", readme).group(1)
    stated = {key.strip(): float(value) for key, value in (item.split("=") for item in documented.split(","))}
    signature = inspect.signature(CoupledWeightDecaySGD.__init__).parameters
    assert stated == {key: signature[key].default for key in stated}
    train = config_lib.TrainConfig()
    assert (train.momentum, train.weight_decay, train.clipnorm) == (
        stated["momentum"], stated["weight_decay"], stated["global_clipnorm"])
    optimizer = CoupledWeightDecaySGD(0.1)
    assert (optimizer.momentum, optimizer.weight_decay, optimizer.global_clipnorm) == (0.9, 5e-4, 1.0)
