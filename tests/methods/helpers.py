"""Shared pieces of the method tests: a tiny encoder, distinct images, one fit step."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
import yaml

import amcl_keras as amcl
from amcl_keras import config as config_lib, registry

GLOBAL_BATCH = 8

# THE list of methods for the generic suites: the registry's (a method registered by its own module joins them)
METHODS = registry.names()
# the methods amcl_keras ships (for the tests of its own configs and docs; a test's toy method has neither)
SHIPPED_METHODS = [name for name in METHODS if registry.method(name).model.__module__.startswith("amcl_keras.")]
# "some method" for the tests that are not about methods: the one a config gets when it names none
DEFAULT_METHOD = config_lib.ModelConfig.method
# a shipped method other than the default (for the tests that change a run's method)
ANOTHER_METHOD = next(name for name in SHIPPED_METHODS if name != DEFAULT_METHOD)


def views(seed=0):
    """Two views of 8 distinct 8×8 images (gratings + noise): clearly different embeddings,
    so top-k negatives have no near-ties."""
    rng = np.random.default_rng(seed)
    grid = np.arange(8, dtype="float32")
    freq = rng.uniform(0.2, 2.0, size=(GLOBAL_BATCH, 1, 1, 1))
    phase = rng.uniform(0, 6.28, size=(GLOBAL_BATCH, 1, 1, 1))
    base = 0.5 + 0.5 * np.sin(freq * grid[None, :, None, None] + phase) * np.cos(freq * grid[None, None, :, None])
    noise = lambda: 0.1 * rng.normal(size=base.shape)  # noqa: E731
    return (base + noise()).astype("float32"), (base + noise()).astype("float32")


def tiny_encoder():
    return amcl.encoders.small_convnet((8, 8, 1), width=4, synchronized_batch_norm=True)


# A small model of ANY registered method: the method's own `from_model_config` reads a config made with these
# values wherever the method has the setting (a toy method registered by a test gets the same treatment).
SMALL_MODEL = {
    "num_heads": 2, "projection_dim": 8, "hidden_dim": 16, "top_k": 5, "temperature_hidden_dim": 8, "beta": 0.01,
    # the paper's objective everywhere: its loss is the most sensitive to a wrong gradient or reduction
    "objective": "authors",
    # with the default 1e-5 an AMCL loss over raw channel vectors (Barlow Twins) starts near 1e8 and float32
    # round-off, not the distribution, decides its last digits
    "temperature_min": 0.1,
    "queue_size": 32, "momentum": 0.9, "predictor_hidden_dim": 4,
}


def _settings_of(method):
    if method not in registry.METHODS:
        raise ValueError(f"tests/methods/helpers.build: {method!r} is not a registered method (registered: "
                         f"{registry.names()}); import the module that registers it first.")
    return {field.name for field in dataclasses.fields(registry.method(method).settings)}


def own_settings(method, **values):
    """`model.KEY=VALUE` overrides of those `values` that `method`'s settings dataclass declares (e.g. a small
    queue_size or predictor_hidden_dim for a fast test: only a method with that setting gets it)."""
    return [f"model.{key}={value}" for key, value in values.items() if key in _settings_of(method)]


def small_config(method, amcl_on, **options):
    """The `model:` config of a small `method` model; `options` that are config settings override SMALL_MODEL."""
    known = _settings_of(method) | {field.name for field in dataclasses.fields(config_lib.ModelConfig)}
    values = {**SMALL_MODEL, **{k: v for k, v in options.items() if k in known}, "method": method, "amcl": amcl_on}
    overrides = [f"model.{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for key, value in values.items() if key in known]
    return config_lib.load(None, overrides + [f"data.batch_size={GLOBAL_BATCH}"]).model


def build(method, amcl_on, strategy=None, clipnorm=1.0, lr=0.5, encoder=None, **options):
    """A small model of any registered `method` (SMALL_MODEL settings, built by the method's `from_model_config`),
    compiled with SGD, inside `strategy` (default: one device); `encoder`: a function that returns the encoder
    (default `tiny_encoder`); `options`: config settings (e.g. encoder_forward, moco_form) or constructor keywords."""
    cfg = small_config(method, amcl_on, **options)
    constructor = {k: v for k, v in options.items() if not hasattr(cfg, k) and k not in SMALL_MODEL}
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = registry.method(method).model.from_model_config((encoder or tiny_encoder)(), cfg, GLOBAL_BATCH,
                                                              temperature_clipping=cfg.temperature_clipping, **constructor)
        model.compile(optimizer=keras.optimizers.SGD(lr, global_clipnorm=clipnorm))
    return model


def one_step(model, view1, view2):
    history = model.fit(tf.data.Dataset.from_tensors((view1, view2)), epochs=1, verbose=0, shuffle=False)
    return history.history


def one_with_and_one_without_negatives():
    """The first registered method whose AMCL loss has negatives (SimCLR's kind) and the first whose has none
    (Barlow Twins' kind): the two shapes of loss a code path can see, for tests too slow to run for every method."""
    from amcl_keras.losses.adaptive import AMCLContrastiveLoss

    kinds = {}
    for name in METHODS:
        kinds.setdefault(issubclass(registry.method(name).model.amcl_loss, AMCLContrastiveLoss), name)
    return sorted(kinds.values())
