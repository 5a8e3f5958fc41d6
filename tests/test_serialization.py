"""Every public layer, loss and model survives get_config → from_config with every argument."""

import inspect

import keras
import numpy as np
import pytest

import amcl_keras as amcl
from amcl_keras.augment import RandomApply, RandomResizedCrop
from amcl_keras.backbones import ApplicationPreprocessing, TokenPooling

NON_DEFAULT = [
    (amcl.AdaptiveTemperature, dict(projection_dim=16, hidden_dim=7, temperature_min=1e-3, temperature_max=1.5,
                                    stop_gradient=True)),
    (amcl.ProjectionHead, dict(hidden_dims=[32, 24], output_dim=12, batch_norm=True, activation="gelu",
                               synchronized_batch_norm=True, output_batch_norm=True)),
    (amcl.MultiHeadProjector, dict(num_heads=2, hidden_dims=[20], output_dim=10, batch_norm=True, activation="tanh",
                                   synchronized_batch_norm=True, output_batch_norm=True)),
    (amcl.MultiHeadPredictor, dict(num_heads=3, hidden_dims=[6], output_dim=10, batch_norm=True, activation="relu",
                                   synchronized_batch_norm=False, output_batch_norm=True)),
    (amcl.losses.InfoNCELoss, dict(temperature=0.3)),
    (
        amcl.losses.AMCLInfoNCELoss,
        dict(projection_dim=16, beta=0.01, negatives="topk", top_k=9, temperature_hidden_dim=5,
             temperature_min=1e-3, temperature_max=1.5, objective="rectified", temperature_center=0.1, temperature_stop_gradient=True),
    ),
    (amcl.losses.BarlowTwinsLoss, dict(lambda_=0.01)),
    (
        amcl.losses.AMCLBarlowTwinsLoss,
        dict(projection_dim=16, batch_size=32, lambda_=0.01, beta=1e-5, temperature_hidden_dim=7,
             temperature_min=1e-4, temperature_max=1.0, objective="normalized", temperature_center=0.2, temperature_stop_gradient=True),
    ),
    (amcl.losses.SimSiamLoss, dict()),
    (
        amcl.losses.AMCLSimSiamLoss,
        dict(projection_dim=16, beta=1e-3, temperature_hidden_dim=7, temperature_min=1e-4, temperature_max=1.0,
             objective="weighted", temperature_center=0.3, temperature_stop_gradient=True),
    ),
    (amcl.losses.NTXentLoss, dict(temperature=0.2)),
    (
        amcl.losses.AMCLNTXentLoss,
        dict(projection_dim=16, beta=0.01, negatives="hardest", top_k=7, temperature_hidden_dim=9,
             temperature_min=1e-4, temperature_max=1.0, objective="normalized", temperature_center=0.5, temperature_stop_gradient=True),
    ),
    (RandomResizedCrop, dict(size=20, scale=[0.3, 0.9], ratio=[0.5, 2.0])),
    (ApplicationPreprocessing, dict(mode="torch")),
    (TokenPooling, dict(pooling="mean")),
]


# set by a subclass from its own arguments, never by a user: AdaptiveTemperatureLoss's φ input size
# (AMCLBarlowTwinsLoss: its `batch_size`) and ContrastiveTrainer's projector (each method builds its heads)
INTERNAL_ARGUMENTS = {"temperature_input_dim", "projector"}


def _init_arguments(cls):
    """Every argument the constructor takes: its own, and those of the amcl_keras base classes it forwards
    `**kwargs` to (the AMCL losses list only their own and pass the temperature network's on)."""
    names = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("amcl_keras") or "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.name != "self" and p.kind is not p.VAR_KEYWORD}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names - INTERNAL_ARGUMENTS


@pytest.mark.parametrize("cls,kwargs", NON_DEFAULT, ids=lambda v: getattr(v, "__name__", ""))
def test_layer_round_trip_keeps_every_argument(cls, kwargs):
    assert set(kwargs) == _init_arguments(cls), "the test must set every constructor argument"
    layer = cls(**kwargs)
    config = layer.get_config()
    for key, value in kwargs.items():
        assert config[key] == value, key
    clone = cls.from_config(config)
    assert clone.get_config() == config
    # and through Keras's registry, as a saved model would do it
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is cls and revived.get_config() == config


def test_random_apply_round_trip():
    layer = RandomApply(keras.layers.RandomFlip("horizontal"), rate=0.3)
    clone = RandomApply.from_config(layer.get_config())
    assert clone.rate == 0.3 and isinstance(clone.layer, keras.layers.RandomFlip)


@pytest.mark.parametrize("amcl_on", [True, False])
def test_simclr_round_trip_keeps_every_argument_and_weights_load(amcl_on, tmp_path):
    encoder = amcl.encoders.small_convnet((12, 12, 1), width=4)
    loss = amcl.losses.AMCLNTXentLoss(10, top_k=3, beta=0.02) if amcl_on else amcl.losses.NTXentLoss(0.3)
    model = amcl.SimCLR(encoder, num_heads=2, amcl=amcl_on, projection_dim=10, hidden_dim=14, loss=loss)
    config = model.get_config()
    assert {"encoder", "num_heads", "amcl", "projection_dim", "hidden_dim", "loss"} <= set(config)
    assert _init_arguments(amcl.SimCLR) - {"augmenter"} <= set(config)  # an augmenter is stored when given
    clone = amcl.SimCLR.from_config(config)
    assert clone.num_heads == 2 and clone.projection_dim == 10 and clone.hidden_dim == 14 and clone.amcl == amcl_on
    assert clone.contrastive_loss.get_config() == loss.get_config()
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    clone.load_weights(path)
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)
