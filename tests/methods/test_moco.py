import keras
import numpy as np
import pytest
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import config as config_lib, registry
from amcl_keras.backups import RunBackup
from tests import reference
from tests.methods.helpers import DEFAULT_METHOD, GLOBAL_BATCH, SMALL_MODEL, build, one_step, tiny_encoder, views

FORMS = ["asymmetric", "symmetric"]


def keys_of(model, images):
    """The momentum encoder's keys in training mode, L2-normalised (float64)."""
    return reference.normalize(
        model.key_projector(model.key_encoder(images, training=True), training=True).numpy().astype(np.float64)
    )


def test_queue_starts_normalised_and_key_encoder_starts_equal():
    model = build("moco", True)
    assert model.moco_form == "asymmetric"  # the authors'
    assert model.queue.keys.shape == (2, 32, 8)
    np.testing.assert_allclose(np.linalg.norm(model.queue.keys.numpy(), axis=-1), 1.0, rtol=1e-6)
    for k, q in zip(model.key_encoder.get_weights(), model.encoder.get_weights()):
        np.testing.assert_array_equal(k, q)
    assert model.key_encoder.trainable_weights == [] and model.key_projector.trainable_weights == []
    assert not any(v is model.queue.keys for v in model.trainable_variables)


@pytest.mark.parametrize("moco_form", FORMS)
def test_momentum_update_and_queue_order_are_exact(moco_form):
    view1, view2 = views(4)
    model = build("moco", True, clipnorm=None, moco_form=moco_form)
    old_keys = [w.copy() for w in model.key_encoder.get_weights() + model.key_projector.get_weights()]
    old_queue = model.queue.keys.numpy().copy()
    # the keys the step will enqueue: the key encoder (training mode, each view on its own) before
    # its momentum update; asymmetric: view 2's B keys only, symmetric: view 1's then view 2's
    keys = keys_of(model, view2) if moco_form == "asymmetric" else np.concatenate(
        [keys_of(model, view1), keys_of(model, view2)])
    per_step = len(keys)
    assert per_step == (GLOBAL_BATCH if moco_form == "asymmetric" else 2 * GLOBAL_BATCH)
    one_step(model, view1, view2)
    # w_k ← m·w_k + (1 − m)·w_q with the query weights AFTER the optimizer step (trainable weights)
    key_vars = model.key_encoder.weights + model.key_projector.weights
    query_vars = model.encoder.weights + model.projector.weights
    for old, k_var, q_var in zip(old_keys, key_vars, query_vars):
        if q_var.trainable:
            np.testing.assert_allclose(k_var.numpy(), 0.9 * old + 0.1 * q_var.numpy(), rtol=1e-6, atol=1e-7)
    # FIFO: the first slots now hold the step's keys per head, in order; the rest is untouched
    queue = model.queue.keys.numpy()
    np.testing.assert_allclose(queue[:, :per_step], np.transpose(keys, (1, 0, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(queue[:, per_step:], old_queue[:, per_step:])
    assert int(model.queue.pointer.numpy()) == per_step
    for _ in range(4):
        one_step(model, view1, view2)  # 5 steps: more keys than the 32 slots, the pointer wraps
    assert int(model.queue.pointer.numpy()) == 5 * per_step % 32


@pytest.mark.parametrize("amcl_on", [True, False], ids=["amcl", "baseline"])
@pytest.mark.parametrize("moco_form", FORMS)
def test_loss_is_the_queue_loss_of_the_form(moco_form, amcl_on):
    """asymmetric (the authors'): AMCL ½·[dir(q1, k2) + dir(k2, q1)], baseline dir(q1, k2);
    symmetric: ½·[dir(q1, k2) + dir(q2, k1)]. NumPy references on the model's embeddings."""
    view1, view2 = views(5)
    model = build("moco", amcl_on, clipnorm=None, moco_form=moco_form)
    q1, q2 = (model.projector(model.encoder(v, training=True), training=True).numpy() for v in (view1, view2))
    k1, k2 = keys_of(model, view1), keys_of(model, view2)
    queue = model.queue.keys.numpy()
    if amcl_on:
        weights = model.contrastive_loss.temperature.get_weights()
        direction = lambda a, b: reference.amcl_infonce(a, b, queue, weights, 0.01, "topk", 5, t_min=SMALL_MODEL["temperature_min"])  # noqa: E731
    else:
        tau = amcl.methods.moco.MoCoSettings.temperature  # the default τ the baseline model was built with
        direction = lambda a, b: reference.infonce(a, b, queue, tau)  # noqa: E731
    if moco_form == "symmetric":
        expected = 0.5 * (direction(q1, k2) + direction(q2, k1))
    else:
        expected = 0.5 * (direction(q1, k2) + direction(k2, q1)) if amcl_on else direction(q1, k2)
    np.testing.assert_allclose(one_step(model, view1, view2)["loss"][0], expected, rtol=1e-5, atol=1e-6)


def authors_asymmetric_loss(q, k, queue, phi_weights, beta, top_k, objective, t_min=1e-5, t_max=2.0):
    """LeiWangR/cl amcl/losses.py AMCLMoCoLoss.forward (and _direction) written out in TF: per head
    ½·[dir(q, k) + dir(k, q)] against that head's queue, summed over heads; k (computed under
    no_grad there) has no gradient. "rectified" / "normalized": this project's bounded forms of the
    same directions, softplus(−s⁺/τ⁺) + mean_k softplus(s_k/τ_k) + β·[R(τ⁺) + mean_k R(τ_k)] /
    −log softmax of s⁺/τ⁺ among [s⁺/τ⁺, s_j/τ_j over the queue] + β·[R(τ⁺) + mean_j R(τ_j)]."""
    w1, b1, w2, b2 = phi_weights
    dim = q.shape[-1]

    def phi(x):
        return tf.nn.relu(x @ w1 + b1) @ w2 + b2

    def tau_of(score):
        return t_min + (t_max - t_min) * tf.sigmoid(-score)

    def bounded(tau, center=2.0 / dim):
        return 0.5 * dim * (tf.math.log(tau / center) + center / tau - 1.0)

    def direction(anchor, positive, bank):
        anchor, positive, bank = (tf.math.l2_normalize(x, axis=-1) for x in (anchor, positive, bank))
        pos_sim = tf.reduce_sum(anchor * positive, -1)
        tau_pos = tau_of(tf.reduce_sum(phi(anchor) * phi(positive), -1))
        tau_neg = tau_of(phi(anchor) @ tf.transpose(phi(bank)))
        sim_neg = anchor @ tf.transpose(bank)
        vals, idx = tf.math.top_k(sim_neg, k=min(top_k, bank.shape[0]))
        tau_top = tf.gather(tau_neg, idx, batch_dims=1)
        if objective == "normalized":
            logits = tf.concat([(pos_sim / tau_pos)[:, None], sim_neg / tau_neg], axis=1)
            value = (tf.reduce_logsumexp(logits, 1) - pos_sim / tau_pos
                     + beta * (bounded(tau_pos) + tf.reduce_mean(bounded(tau_neg), 1)))
        elif objective == "authors":
            value = (-pos_sim / tau_pos + tf.reduce_mean(vals / tau_top, 1)
                     + beta * (0.5 * dim * tf.math.log(tau_pos) + 1.0 / tau_pos)
                     - beta * tf.reduce_sum(tf.math.log(tau_top) + 1.0 / tau_top, 1))
        else:
            value = (tf.nn.softplus(-pos_sim / tau_pos) + tf.reduce_mean(tf.nn.softplus(vals / tau_top), 1)
                     + beta * (bounded(tau_pos) + tf.reduce_mean(bounded(tau_top), 1)))
        return tf.reduce_mean(value)

    k = tf.stop_gradient(k)
    return tf.add_n([0.5 * (direction(q[:, h], k[:, h], queue[h]) + direction(k[:, h], q[:, h], queue[h]))
                     for h in range(q.shape[1])])


@pytest.mark.parametrize("objective", ["authors", "rectified", "normalized"])
def test_asymmetric_step_follows_the_gradient_of_the_authors_loss(objective):
    """Every trainable weight after one plain SGD step equals w − lr·∇ of the authors' loss, written
    out above: in dir(k, q) the query is the positive and gets gradient, the key does not."""
    view1, view2 = views(11)
    loss = amcl.losses.AMCLInfoNCELoss(8, beta=0.01, top_k=5, temperature_hidden_dim=8, objective=objective)
    model = amcl.MoCo(tiny_encoder(), num_heads=2, projection_dim=8, hidden_dim=16, queue_size=32, momentum=0.9,
                      loss=loss)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    keys = model.key_projector(model.key_encoder(view2, training=True), training=True)
    queue = tf.convert_to_tensor(model.queue.keys)
    phi = model.contrastive_loss.temperature.weights
    assert [w.path.rsplit("/", 1)[-1] for w in phi] == ["kernel", "bias", "kernel", "bias"]
    with tf.GradientTape() as tape:
        q = model.projector(model.encoder(view1, training=True), training=True)
        expected_loss = authors_asymmetric_loss(q, keys, queue, phi, 0.01, 5, objective)
    gradients = tape.gradient(expected_loss, model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    logs = one_step(model, view1, view2)
    np.testing.assert_allclose(logs["loss"][0], expected_loss.numpy(), rtol=1e-5, atol=1e-6)
    for variable, old, gradient in zip(model.trainable_variables, before, gradients):
        assert gradient is not None, variable.path
        expected = old - 0.5 * gradient.numpy()
        np.testing.assert_allclose(variable.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max() + 1e-6,
                                   err_msg=variable.path)


@pytest.mark.parametrize("moco_form,queue_size,needed", [("asymmetric", 4, 8), ("symmetric", 8, 16)])
def test_queue_smaller_than_the_keys_of_one_step_is_refused(moco_form, queue_size, needed):
    model = amcl.MoCo(amcl.encoders.small_convnet((8, 8, 1), width=4), num_heads=1, projection_dim=8,
                      hidden_dim=8, queue_size=queue_size, moco_form=moco_form)
    model.compile(optimizer="sgd")
    view1, view2 = views()
    with pytest.raises(ValueError, match=f"queue_size >= {needed}"):
        one_step(model, view1, view2)


@pytest.mark.parametrize("kwargs,message", [({"queue_size": 0}, "queue_size"), ({"momentum": 1.0}, "momentum"),
                                            ({"moco_form": "both"}, "'asymmetric', 'symmetric'")])
def test_bad_moco_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        amcl.MoCo(amcl.encoders.small_convnet((8, 8, 1), width=4), **kwargs)


def test_checkpoint_keeps_the_queue(tmp_path):
    model = build("moco", True)
    one_step(model, *views())
    path = str(tmp_path / "moco.weights.h5")
    model.save_weights(path)
    clone = build("moco", True)
    clone.load_weights(path)
    np.testing.assert_array_equal(clone.queue.keys.numpy(), model.queue.keys.numpy())
    assert int(clone.queue.pointer.numpy()) == GLOBAL_BATCH


def test_key_queue_layer_writes_after_its_pointer_and_wraps():
    """KeyQueue on its own: FIFO writes in order, wrap-around, and a clear error when a step's keys
    cannot fit."""
    queue = amcl.methods.KeyQueue(num_heads=2, size=5, dim=3)
    queue.build()
    before = queue.keys.numpy().copy()
    keys = np.arange(2 * 2 * 3, dtype="float32").reshape(2, 2, 3)  # [b=2, C=2, d=3]
    queue.enqueue(tf.constant(keys))
    np.testing.assert_array_equal(queue.keys.numpy()[:, :2], np.transpose(keys, (1, 0, 2)))
    np.testing.assert_array_equal(queue.keys.numpy()[:, 2:], before[:, 2:])
    more = 100 + np.arange(4 * 2 * 3, dtype="float32").reshape(4, 2, 3)
    queue.enqueue(tf.constant(more))  # slots 2, 3, 4, then 0
    expected = np.transpose(more, (1, 0, 2))
    np.testing.assert_array_equal(queue.keys.numpy()[:, 2:], expected[:, :3])
    np.testing.assert_array_equal(queue.keys.numpy()[:, 0], expected[:, 3])
    np.testing.assert_array_equal(queue.keys.numpy()[:, 1], np.transpose(keys, (1, 0, 2))[:, 1])
    assert int(queue.pointer.numpy()) == 1
    with pytest.raises(ValueError, match="6 keys per step do not fit a queue of size 5"):
        queue.enqueue(tf.zeros((6, 2, 3)))


@pytest.mark.parametrize("moco_form,encoder_forward,keys", [
    ("asymmetric", "per_view", 8),
    # the symmetric form once: its per-view forward is the one test_distributed covers for every other method
    pytest.param("symmetric", "concatenated", 16, marks=pytest.mark.slow),
])
def test_two_replicas_equal_one_device_queue_included(moco_form, encoder_forward, keys, two_replicas):
    """The generic two-replica check (tests/methods/test_distributed.py) for each MoCo form, then the queue: the
    global batch's keys (1 view asymmetric, 2 symmetric) enqueued alike."""
    from tests.methods.test_distributed import check_two_replicas_equal_one_device

    single, mirrored = check_two_replicas_equal_one_device(
        "moco", {"moco_form": moco_form, "encoder_forward": encoder_forward}, True, two_replicas)
    assert int(single.queue.pointer.numpy()) == int(mirrored.queue.pointer.numpy()) == keys
    np.testing.assert_allclose(mirrored.queue.keys.numpy(), single.queue.keys.numpy(), rtol=1e-5, atol=1e-6)


def test_moco_declares_its_validated_learning_rate():
    """What `amcl train --method moco` trains with when the config leaves train.learning_rate open."""
    assert registry.method("moco").learning_rate == 0.08


# --- MoCo's settings in the config and the CLI -------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.method=moco", "model.queue_size=100"], r"MoCo \(asymmetric\) enqueues 256 keys per step"),
        (["model.method=moco", "model.moco_form=symmetric", "model.queue_size=300"],
         r"model.queue_size=300 .*MoCo \(symmetric\) enqueues 512 keys per step \(batch 256 × 2 views\)"),
        (["model.method=moco", "model.moco_form=both"], r"model.moco_form='both' .*'asymmetric', 'symmetric'"),
        (["model.moco_form=symmetric"], rf"model.moco_form is a setting of moco, and model.method is {DEFAULT_METHOD!r}"),
        (["model.method=moco", "model.projector_output_bn=true"], "model.method is 'moco'"),
        (["model.method=moco", "model.momentum=1.0"], "model.momentum=1.0 is out of range"),
    ],
)
def test_bad_moco_settings_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load(None, overrides)


def test_moco_queue_needs_one_batch_asymmetric_and_two_symmetric():
    config_lib.load(None, ["model.method=moco", "model.queue_size=256"])
    config_lib.load(None, ["model.method=moco", "model.moco_form=symmetric", "model.queue_size=512"])
    with pytest.raises(config_lib.ConfigError, match="enqueues 512"):
        config_lib.load(None, ["model.method=moco", "model.moco_form=symmetric", "model.queue_size=256"])


def test_cli_refuses_a_queue_smaller_than_the_keys_of_one_step(tmp_path, capsys, monkeypatch):
    """The `amcl train` catalogue of bad inputs (tests/test_bad_inputs.py), MoCo's case."""
    from tests.test_bad_inputs import check_bad_training_input

    check_bad_training_input(["--method", "moco", "--set", "model.queue_size=16"], "use at least that",
                             tmp_path, capsys, monkeypatch)


# --- the queue and the key encoder across a resume and a skipped step ---------------------------------------
def test_backup_restores_weights_optimizer_state_and_moco_queue(tmp_path):
    view1, view2 = views()
    model = build("moco", True, lr=0.1)
    data = tf.data.Dataset.from_tensors((view1, view2)).repeat(3)
    backup = RunBackup(tmp_path / "backup", every_steps=2)
    model.fit(data, epochs=1, verbose=0, callbacks=[backup])
    assert RunBackup.read_state(tmp_path / "backup") == {"epoch": 1, "step": 0, "weights": "backup-e1-s0.weights.h5"}
    # the previous backup is kept as a fallback, older ones are removed
    assert sorted(p.name for p in (tmp_path / "backup").glob("*.h5")) == ["backup-e0-s2.weights.h5",
                                                                         "backup-e1-s0.weights.h5"]
    assert RunBackup.backups(tmp_path / "backup")[1] == {"epoch": 0, "step": 2, "weights": "backup-e0-s2.weights.h5"}

    fresh = build("moco", True, lr=0.1)
    assert RunBackup.restore(fresh, tmp_path / "backup")["epoch"] == 1
    assert int(fresh.optimizer.iterations) == 3
    for name in ("keys", "pointer"):
        np.testing.assert_array_equal(getattr(fresh.queue, name).numpy(), getattr(model.queue, name).numpy())
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # the two continue identically: one more step each on the same batch
    after = [one_step(m, view1, view2)["loss"][0] for m in (model, fresh)]
    np.testing.assert_allclose(after[0], after[1], rtol=1e-6)


def test_a_skipped_step_copies_only_what_a_forward_pass_can_change():
    """MoCo's queue and momentum-updated key weights change only after an applied step: the guard's snapshot
    leaves them out (the bit-identical tests of tests/methods/test_nonfinite_step.py show the step still leaves
    them alone)."""
    model = build("moco", True)
    snapshot = {id(v) for v in model.forward_state()}
    assert not {id(v) for v in model.queue.weights} & snapshot
    key_kernels = [v for v in model.key_encoder.weights if "kernel" in v.path]
    assert key_kernels and not {id(v) for v in key_kernels} & snapshot
    key_statistics = [v for v in model.key_encoder.weights if "moving" in v.path]
    assert key_statistics and {id(v) for v in key_statistics} <= snapshot  # its forward pass updates these
