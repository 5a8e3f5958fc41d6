"""Mixed precision: every method trains with finite losses and gradients with τ at its floor;
the losses and the temperature network stay float32."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import registry
from tests.methods import helpers

STEPS = 64  # float16 at the floor skips ~30 steps (Barlow Twins) while the loss scale comes down
FLOOR = dict(temperature_min=1e-5, temperature_max=1.1e-5, objective="authors")  # every τ ≈ 1e-5: logits ~1e5, beyond float16


def _model(method):
    """A small model of `method` (tests/methods/helpers.py's sizes, the method's own β) whose temperatures are all ≈ 1e-5."""
    return helpers.build(method, True, encoder=lambda: amcl.encoders.small_convnet((8, 8, 1), width=4),
                         beta=registry.method(method).settings.beta, **FLOOR)


class _StepLosses(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))

    def on_train_end(self, logs=None):
        self.model.history.history["step_losses"] = self.losses


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("method", [helpers.DEFAULT_METHOD] + [pytest.param(m, marks=pytest.mark.slow)
                                                                  for m in helpers.METHODS if m != helpers.DEFAULT_METHOD])
def test_every_method_trains_finitely_with_temperatures_at_the_floor(policy, method):
    view1, view2 = helpers.views()
    model = _model(method)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, global_clipnorm=1.0))
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # loss scaling where float16 needs it
    assert model.encoder.layers[1].compute_dtype == policy.split("_")[1]  # the encoder does compute in low precision
    loss_fn = model.contrastive_loss
    assert loss_fn.compute_dtype == "float32" and loss_fn.temperature.compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in loss_fn.temperature.weights)
    before = [w.numpy().copy() for w in model.trainable_weights]
    # float16: at τ ≈ 1e-5 the gradients are ~1e5, so the first steps overflow at Keras's initial
    # loss scale 2^15; the dynamic scale halves on each skipped step until they fit, then trains.
    history = model.fit(tf.data.Dataset.from_tensors((view1, view2)).repeat(STEPS), epochs=1, verbose=0,
                        callbacks=[_StepLosses()])
    losses = history.history["step_losses"]
    assert len(losses) == STEPS and np.all(np.isfinite(losses)), losses
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)), "no step was applied"
    tau = model.get_metrics_result()["tau_pos_0"]
    assert 1e-5 <= float(tau) <= 1.1e-5
    # the gradient at the current loss scale is finite (float16 overflow is what loss scaling prevents)
    with tf.GradientTape() as tape:
        z = model.projector(model.encoder(tf.concat([view1, view2], 0), training=True), training=True)
        loss = model.compute_loss_and_stats(z[:8], z[8:], (view1, view2)).loss
        scaled = model.optimizer.scale_loss(loss)
    assert loss.dtype == tf.float32
    gradients = tape.gradient(scaled, model.trainable_variables)
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients if g is not None)


@pytest.mark.slow
def test_a_mixed_float16_run_exports_a_float32_encoder_and_restores_the_policy(tmp_path):
    from amcl_keras import cli

    run_dir = tmp_path / "run"
    assert cli.main([
        "train", "--run-dir", str(run_dir), "--epochs", "1", "--steps-per-epoch", "2",
        "--set", "train.mixed_precision=mixed_float16", "--set", "data.batch_size=32", "--set", "model.encoder_width=4",
        "--set", "model.hidden_dim=16", "--set", "model.projection_dim=8", "--set", "eval.probe_epochs=1",
        "--set", "eval.max_examples=100", "--set", "export.formats=[saved_model]",
    ]) == 0
    assert keras.config.dtype_policy().name == "float32"  # the run does not leak its policy
    assert json.loads((run_dir / "results.json").read_text())["mixed_precision"] == "mixed_float16"
    loaded = tf.saved_model.load(str(run_dir / "export" / "saved_model"))
    output = loaded.signatures["serving_default"](images=tf.zeros([2, 28, 28, 1], tf.uint8))
    assert all(t.dtype == tf.float32 for t in output.values())
