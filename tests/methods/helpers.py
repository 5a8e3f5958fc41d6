"""Shared pieces of the method tests: a tiny encoder, distinct images, one fit step."""

import keras
import numpy as np
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import registry

GLOBAL_BATCH = 8

# THE list of methods for the generic suites: the registry's (a method registered by its own module joins them)
METHODS = registry.names()


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


def build(method, amcl_on, strategy=None, clipnorm=1.0, lr=0.5, encoder=None, **options):
    """A small model of `method`, compiled with SGD, inside `strategy` (default: one device);
    `encoder`: a function that returns the encoder (default `tiny_encoder`); `options` go to the method's
    constructor (e.g. encoder_forward, moco_form)."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        encoder = (encoder or tiny_encoder)()
        common = dict(num_heads=2, amcl=amcl_on, projection_dim=8, hidden_dim=16, **options)
        if method == "simclr":
            loss = amcl.losses.AMCLNTXentLoss(8, beta=0.01, top_k=5, temperature_hidden_dim=8, objective="authors") if amcl_on else None
            model = amcl.SimCLR(encoder, loss=loss, **common)
        elif method == "moco":
            loss = amcl.losses.AMCLInfoNCELoss(8, beta=0.01, top_k=5, temperature_hidden_dim=8) if amcl_on else None
            model = amcl.MoCo(encoder, queue_size=32, momentum=0.9, loss=loss, **common)
        elif method == "barlow_twins":
            # temperature_min 0.1: with the default 1e-5 the loss starts near 1e8 (τ on raw channel
            # vectors saturates) and float32 round-off, not the distribution, decides the last digits.
            loss = amcl.losses.AMCLBarlowTwinsLoss(
                8, GLOBAL_BATCH, beta=1e-3, temperature_hidden_dim=8, temperature_min=0.1, objective="authors"
            ) if amcl_on else None
            model = amcl.BarlowTwins(encoder, batch_size=GLOBAL_BATCH, loss=loss, **common)
        elif method == "simsiam":
            loss = amcl.losses.AMCLSimSiamLoss(8, beta=0.01, temperature_hidden_dim=8) if amcl_on else None
            model = amcl.SimSiam(encoder, predictor_hidden_dim=4, loss=loss, **common)
        else:
            raise ValueError(f"tests/methods/helpers.build knows no small model of method {method!r}; add one here "
                             "(simclr, moco, barlow_twins, simsiam are built).")
        model.compile(optimizer=keras.optimizers.SGD(lr, global_clipnorm=clipnorm))
    return model


def one_step(model, view1, view2):
    history = model.fit(tf.data.Dataset.from_tensors((view1, view2)), epochs=1, verbose=0, shuffle=False)
    return history.history
