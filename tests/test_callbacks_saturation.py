"""`TemperatureSaturationWarning`: one warning when AMCL's temperatures sit at temperature_min,
`tau_floor` in the epoch logs, nothing for mid-range temperatures or a baseline (docs/METHOD.md §8)."""

import contextlib
import io
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras.callbacks import TemperatureCollapseWarning, TemperatureSaturationWarning, floor_fractions
from amcl_keras.constants import TEMPERATURE_MIN
from tests.methods import helpers

TAU_MIN = 1e-5


def _model(amcl_on=True, phi_bias=None):
    """A tiny AMCL model of the default method whose φ is forced: W2 = 0 and output bias `phi_bias`, so every pair's
    score is r = |phi_bias|² and τ = τ_min + (τ_max − τ_min)·sigmoid(−r) is the same for all pairs."""
    model = helpers.build(helpers.DEFAULT_METHOD, amcl_on, lr=0.01, temperature_min=TEMPERATURE_MIN)  # the default floor
    if phi_bias is not None:
        temperature = model.contrastive_loss.temperature
        w1, b1, w2, _ = temperature.get_weights()
        temperature.set_weights([w1, b1, np.zeros_like(w2), np.full(w2.shape[1], phi_bias, "float32")])
    return model


def _fit(model, callback, epochs=3, verbose=0):
    view1, view2 = helpers.views()
    data = tf.data.Dataset.from_tensors((view1, view2)).repeat(2)  # 2 steps per epoch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # so a second warning would be seen, not deduplicated by Python
        history = model.fit(data, epochs=epochs, verbose=verbose, callbacks=[callback])
    return history.history, [w for w in caught if issubclass(w.category, TemperatureCollapseWarning)]


def test_collapsed_temperatures_warn_exactly_once_after_the_first_progress_line():
    model = _model(phi_bias=3.0)  # r = 8·9 = 72: sigmoid(−72) ≈ 5e-32, every τ is τ_min
    view1, view2 = helpers.views()
    stats = model.pair_statistics(view1, view2)
    np.testing.assert_allclose(stats["tau_pos"], TAU_MIN, rtol=1e-6)  # the setup really is at the floor
    np.testing.assert_allclose(stats["tau_neg"], TAU_MIN, rtol=1e-6)

    callback = TemperatureSaturationWarning(view1, view2)
    printed = io.StringIO()  # stdout (Keras progress lines) and stderr in one stream, in order
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        history, caught = _fit(model, callback, verbose=2)

    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    for option in ("model.objective", "model.beta", "model.temperature_min", "docs/METHOD.md", "not divergence"):
        assert option in message.replace("NOT", "not"), option
    assert "epoch 1" in message and "100% of positive and 100% of negative" in message
    assert f"(this epoch: {history['loss'][0]:.4g})" in message
    assert history["tau_floor"] == [1.0, 1.0, 1.0]
    assert callback.history_fields == {"tau_floor_per_head": {"tau_pos": {"head0": 1.0, "head1": 1.0},
                                                     "tau_neg": {"head0": 1.0, "head1": 1.0}}}

    text = printed.getvalue()
    assert text.count("amcl: WARNING:") == 1
    line = text.index("amcl: WARNING:")
    first_progress = text.index("tau_floor: 1.0000")  # epoch 1's progress line shows the fraction ...
    assert first_progress < line < text.index("Epoch 2/3")  # ... and the warning comes right under it
    for option in ("model.objective", "model.beta", "model.temperature_min", "docs/METHOD.md"):
        assert option in text[line:text.index("\n", line)]

    # the same callback in a second fit (a resumed run) stays silent
    _, caught = _fit(model, callback, epochs=1)
    assert caught == []


def test_mid_range_temperatures_do_not_warn():
    model = _model(phi_bias=0.0)  # r = 0: τ = τ_min + (τ_max − τ_min)/2 ≈ 1.0 for every pair
    view1, view2 = helpers.views()
    assert 0.9 < float(np.median(model.pair_statistics(view1, view2)["tau_pos"])) < 1.1
    history, caught = _fit(model, TemperatureSaturationWarning(view1, view2))
    assert caught == []
    assert history["tau_floor"] == [0.0, 0.0, 0.0]


def test_baseline_never_warns_and_logs_no_tau_floor():
    view1, view2 = helpers.views()
    history, caught = _fit(_model(amcl_on=False), TemperatureSaturationWarning(view1, view2))
    assert caught == [] and "tau_floor" not in history


@pytest.mark.parametrize("share, margin_factor, warns", [
    (0.6, 1.0, True),    # 60% of one head's negatives at the floor: over one half
    (0.4, 1.0, False),   # 40%: under
    (0.6, 1.2, False),   # 60% at 1.2·τ_min: outside the 10% margin, not "at the floor"
    (0.6, 1.05, True),   # 60% at 1.05·τ_min: inside it
])
def test_threshold_on_any_head_and_on_negatives_alone(share, margin_factor, warns):
    model = _model()
    n_neg, n_pos = 56, 8
    mid = np.full((2, n_neg), 0.8)
    mid[1, : int(share * n_neg)] = TAU_MIN * margin_factor  # only head 1's negatives
    crafted = {"sim_pos": np.ones((2, n_pos)), "sim_neg": np.zeros((2, n_neg)),
               "tau_pos": np.full((2, n_pos), 0.8), "tau_neg": mid}
    model.pair_statistics = lambda view1, view2: crafted
    view1, view2 = helpers.views()
    history, caught = _fit(model, TemperatureSaturationWarning(view1, view2))
    assert len(caught) == (1 if warns else 0)
    expected = int(share * n_neg) / n_neg if margin_factor <= 1.1 else 0.0
    np.testing.assert_allclose(history["tau_floor"], [expected] * 3)
    if warns:
        assert "head 1: 0% of positive and 59% of negative" in str(caught[0].message)


def test_every_steps_finds_a_collapse_mid_epoch_and_reports_it_at_the_epoch_end():
    model = _model(phi_bias=3.0)
    view1, view2 = helpers.views()
    callback = TemperatureSaturationWarning(view1, view2, every_steps=1)
    _, caught = _fit(model, callback, epochs=2)
    assert len(caught) == 1 and "(step 1)" in str(caught[0].message)


def test_floor_fractions_counts_per_head_and_kind():
    stats = {"tau_pos": np.array([[1e-5, 1e-5, 0.5, 0.5], [1.05e-5, 2e-5, 2e-5, 2e-5]]),
             "tau_neg": np.array([[1e-5, 1.0], [1.0, 1.0]])}
    assert floor_fractions(stats, 1e-5) == {"tau_pos": [0.5, 0.25], "tau_neg": [0.5, 0.0]}
    assert floor_fractions({"tau_pos": stats["tau_pos"]}, 1e-5, margin=1.5) == {"tau_pos": [0.5, 1.0]}


def test_training_wires_the_warning_for_amcl_only(tmp_path):
    from amcl_keras import config as config_module, train

    cfg = config_module.Config()
    cfg.eval.online_probe_every, cfg.eval.telemetry_every, cfg.eval.tensorboard = 0, 0, True
    view1, view2 = helpers.views()
    views = tf.data.Dataset.from_tensors((view1, view2))
    labelled = (np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, np.int64))
    for amcl_on in (True, False):
        model = _model(amcl_on=amcl_on)
        callbacks = train.monitoring_callbacks(cfg, tmp_path, model, views, labelled, labelled, 8)
        kinds = [type(c) for c in callbacks]
        assert (TemperatureSaturationWarning in kinds) == amcl_on
        if amcl_on:  # before TensorBoard, so `tau_floor` reaches its scalars and the history
            assert kinds.index(TemperatureSaturationWarning) < kinds.index(keras.callbacks.TensorBoard)
            assert any(TemperatureSaturationWarning in map(type, c.extras) for c in callbacks
                       if isinstance(c, amcl.callbacks.JSONLinesHistory))


def test_the_warning_reuses_the_telemetrys_measurement_of_the_same_epoch(tmp_path):
    """With telemetry on, the fixed batch is measured once per epoch, not once per callback, and the
    warning's `tau_floor` equals what it measures on its own."""
    from amcl_keras import config as config_module, train

    cfg = config_module.Config()
    cfg.eval.online_probe_every, cfg.eval.telemetry_every, cfg.eval.tensorboard = 0, 1, False
    view1, view2 = helpers.views()
    views = tf.data.Dataset.from_tensors((view1, view2))
    labelled = (np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, np.int64))
    model = _model(amcl_on=True)
    calls = []
    measure = model.pair_statistics
    model.pair_statistics = lambda *args: calls.append(1) or measure(*args)
    callbacks = train.monitoring_callbacks(cfg, tmp_path, model, views, labelled, labelled, 8)
    history = model.fit(views.repeat(2), epochs=2, steps_per_epoch=1, verbose=0, callbacks=callbacks)
    assert len(calls) == 2  # one per epoch
    alone = TemperatureSaturationWarning(view1, view2)
    alone.set_model(model)
    logs = {}
    alone.on_epoch_end(1, logs)
    assert history.history["tau_floor"][-1] == logs["tau_floor"]
