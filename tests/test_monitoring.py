import pytest
"""Online kNN monitor and the offline `amcl eval` command (first pieces of the evaluation issue)."""

import json

import keras
import numpy as np
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import cli, data, evaluation
from amcl_keras.constants import TEMPERATURE_MIN

TINY = [
    "--set", "data.batch_size=64", "--set", "model.encoder_width=4", "--set", "model.hidden_dim=32",
    "--set", "model.projection_dim=16", "--set", "eval.probe_epochs=2", "--set", "eval.max_examples=300",
    "--set", "export.formats=[]", "--steps-per-epoch", "3",
]


@pytest.mark.slow
def test_knn_monitor_logs_every_epoch_and_matches_offline_knn(tmp_path):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--run-dir", str(run_dir), "--epochs", "2", "--set", "eval.knn_every=1", *TINY]) == 0
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert all(0.0 <= h["knn_accuracy"] <= 1.0 for h in history) and len(history) == 2
    results = json.loads((run_dir / "results.json").read_text())
    assert history[-1]["knn_accuracy"] == results["trained"]["knn"]  # same encoder, same protocol

    # offline evaluation of the same run: every protocol field, and the same kNN number
    assert cli.main(["eval", str(run_dir)]) == 0
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["knn"]["accuracy"] == results["trained"]["knn"]
    assert abs(report["linear_probe"]["accuracy"] - results["trained"]["linear_probe"]) < 0.02
    for key in ("protocol", "optimizer", "learning_rate", "epochs", "batch"):
        assert key in report["linear_probe"]
    assert {"k", "temperature", "protocol"} <= set(report["knn"]) and report["knn"]["k"] == 200
    assert {"seed", "hardware", "seconds", "data"} <= set(report)


def test_eval_of_a_missing_run_is_explained(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_knn_monitor_under_two_replicas(two_replicas):
    strategy = two_replicas
    images, labels = data.load_shipped("test")
    with strategy.scope():
        model = amcl.SimCLR(amcl.encoders.small_convnet((28, 28, 1), width=4), num_heads=2, projection_dim=8,
                            hidden_dim=16)
        model.compile(optimizer=keras.optimizers.SGD(0.05))
    monitor = amcl.callbacks.KNNMonitor((images[:200], labels[:200]), (images[200:300], labels[200:300]), k=20)
    views = data.pretraining_views(data.load("fashion_mnist_subset", "test"), 32,
                                   amcl.augment.view_augmenter(28, 1, "ae"), shuffle_buffer=100).take(2)
    history = model.fit(views, epochs=1, verbose=0, callbacks=[monitor])
    bank = evaluation.extract_features(model.encoder, images[:200])
    queries = evaluation.extract_features(model.encoder, images[200:300])
    expected = evaluation.knn_accuracy(bank, labels[:200], queries, labels[200:300], k=20)
    np.testing.assert_allclose(history.history["knn_accuracy"][0], expected)


@pytest.mark.slow
def test_report_png_for_one_and_two_runs(tmp_path, capsys):
    from PIL import Image

    runs = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        assert cli.main(["train", "--run-dir", str(run_dir), "--epochs", "2", "--set", "eval.knn_every=1", *TINY]) == 0
        runs.append(str(run_dir))
    for selection, out in ((runs[:1], tmp_path / "one.png"), (runs, tmp_path / "two.png")):
        assert cli.main(["report", *selection, "--out", str(out), "--map", "pca"]) == 0  # t-SNE: test_embedding.py
        with Image.open(out) as image:
            assert image.size == (1200, 1200)  # curves (2 x 2) above, one embedding map per run below
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10, "the figure has content, not a blank canvas"
    assert cli.main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist. Pass the folder `amcl train` wrote" in capsys.readouterr().err


def test_similarity_samples_are_cosines_and_positives_are_more_alike(tmp_path):
    from amcl_keras import report

    run_dir = tmp_path / "r"
    assert cli.main(["train", "--run-dir", str(run_dir), "--epochs", "1", *TINY]) == 0
    positives, negatives = report.similarity_samples(run_dir, count=128)
    assert positives.shape == negatives.shape == (128,)
    assert np.all(np.abs(positives) <= 1 + 1e-5) and np.all(np.abs(negatives) <= 1 + 1e-5)
    assert positives.mean() > negatives.mean()


# --- online linear probe, pair telemetry, TensorBoard --------------------------------------

def _separable_toy(count, seed):
    """8×8 images: class k lights pixel k (of the first 10) over dim noise — linearly separable."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 40, (count, 8, 8, 1)).astype(np.uint8)
    images.reshape(count, 64)[np.arange(count), labels] = 255
    return images, labels


def _flatten_simclr():
    inputs = keras.Input((8, 8, 1))
    encoder = keras.Model(inputs, keras.layers.Flatten()(inputs), name="flatten_encoder")
    model = amcl.SimCLR(encoder, num_heads=2, projection_dim=8, hidden_dim=16,
                        loss=amcl.losses.AMCLNTXentLoss(8, top_k=5, temperature_hidden_dim=8, objective="authors"))
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def test_online_probe_reaches_full_accuracy_on_a_separable_toy_set():
    train, test = _separable_toy(2000, 0), _separable_toy(500, 1)
    model = _flatten_simclr()  # the encoder (Flatten) has no weights: the features are the pixels
    floats = train[0][:256].astype("float32") / 255.0
    pairs = tf.data.Dataset.from_tensors((floats, floats)).repeat(60)
    probe = amcl.callbacks.OnlineLinearProbe(train, test, every=1, batch_size=128, learning_rate=1e-2)
    history = model.fit(pairs, epochs=1, verbose=0, callbacks=[probe])
    assert history.history["probe_accuracy"][0] >= 0.98
    assert history.history["probe_train_accuracy"][0] > 0.5
    # a chance-level toy (labels independent of the pixels) stays near 10 %: the probe does not cheat
    shuffled = (test[0], np.random.default_rng(2).permutation(test[1]))
    chance = amcl.callbacks.OnlineLinearProbe(train, shuffled, every=1, batch_size=128, learning_rate=1e-2)
    history = model.fit(pairs.take(10), epochs=1, verbose=0, callbacks=[chance])
    assert history.history["probe_accuracy"][0] < 0.2


def test_online_probe_gives_the_encoder_no_gradient():
    model = _flatten_simclr()
    weights = [w.copy() for w in model.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # the pre-training step changes nothing
    train, test = _separable_toy(300, 0), _separable_toy(100, 1)
    floats = train[0][:64].astype("float32") / 255.0
    model.fit(tf.data.Dataset.from_tensors((floats, floats)).repeat(5), epochs=1, verbose=0,
              callbacks=[amcl.callbacks.OnlineLinearProbe(train, test, learning_rate=1.0)])
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


def _reference_pair_statistics(model, view1, view2):
    """NumPy from the definitions: cosines of the heads' outputs, τ = φ's sigmoid form."""
    from tests import reference

    z = np.asarray(model.projector(model.encoder(np.concatenate([view1, view2]), training=False), training=False))
    z = reference.normalize(z.astype(np.float64))
    b = len(view1)
    out = {name: [] for name in ("sim_pos", "sim_neg", "tau_pos", "tau_neg")}
    weights = model.contrastive_loss.temperature.get_weights()
    for head in range(z.shape[1]):
        a, c = z[:b, head], z[b:, head]
        sim = a @ c.T
        tau = np.array([[reference.temperature(weights, a[i], c[j]) for j in range(b)] for i in range(b)])
        off = ~np.eye(b, dtype=bool)
        out["sim_pos"].append(np.diag(sim)), out["sim_neg"].append(sim[off])
        out["tau_pos"].append(np.diag(tau)), out["tau_neg"].append(tau[off])
    return {k: np.array(v) for k, v in out.items()}


def test_pair_statistics_match_numpy():
    from tests.methods import helpers

    view1, view2 = helpers.views()
    model = helpers.build(helpers.DEFAULT_METHOD, True, temperature_min=TEMPERATURE_MIN)  # the reference's τ range
    stats = model.pair_statistics(view1, view2)
    expected = _reference_pair_statistics(model, view1, view2)
    assert set(stats) == set(expected)
    for name in expected:
        np.testing.assert_allclose(stats[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # a method whose pairs are not the batch's samples, or that has no negatives: checked in its own test file


def test_monitors_under_two_replicas_match_one_device_computation(two_replicas, tmp_path):
    from tests.methods import helpers

    view1, view2 = helpers.views()
    model = helpers.build(helpers.DEFAULT_METHOD, True, strategy=two_replicas, lr=0.05, temperature_min=TEMPERATURE_MIN)
    train, test = data.load_shipped("test")[0][:200], data.load_shipped("test")[1][:200]
    toy = (tf.image.resize(train, (8, 8)).numpy().astype(np.uint8), test)
    probe = amcl.callbacks.OnlineLinearProbe(toy, toy, batch_size=32)
    telemetry = amcl.callbacks.PairTelemetry(view1, view2, log_dir=tmp_path / "tb")
    history = amcl.callbacks.JSONLinesHistory(tmp_path / "h.jsonl", extras=[telemetry])
    model.fit(tf.data.Dataset.from_tensors((view1, view2)).repeat(3), epochs=2, verbose=0,
              callbacks=[probe, telemetry, history])
    records = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0.0 <= r["probe_accuracy"] <= 1.0 for r in records)
    expected = _reference_pair_statistics(model, view1, view2)  # the final weights, computed here
    last = records[-1]["telemetry"]
    for name in ("sim_pos", "tau_neg"):
        for head in range(2):
            np.testing.assert_allclose(last[name][f"head{head}"]["mean"], expected[name][head].mean(), rtol=1e-5)
            np.testing.assert_allclose(last[name][f"head{head}"]["p50"], np.median(expected[name][head]), rtol=1e-5)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def _event_tags(folder):
    from tensorflow.core.util import event_pb2

    tags = {}
    for path in folder.rglob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            for value in event_pb2.Event.FromString(record.numpy()).summary.value:
                tags[value.tag] = value.metadata.plugin_data.plugin_name
    return tags


@pytest.mark.slow
def test_training_writes_tensorboard_scalars_histograms_and_telemetry_history(tmp_path):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--run-dir", str(run_dir), "--epochs", "2", "--set", "eval.knn_every=1", *TINY]) == 0
    tags = _event_tags(run_dir / "tensorboard")
    for scalar in ("epoch_loss", "epoch_learning_rate", "epoch_knn_accuracy", "epoch_probe_accuracy", "epoch_tau_pos_0"):
        assert tags.get(scalar) == "scalars", (scalar, sorted(tags))
    for head in range(3):
        for stat in ("tau_pos", "tau_neg", "sim_pos", "sim_neg"):
            assert tags.get(f"{stat}/head{head}") == "histograms"
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    summary = history[-1]["telemetry"]["tau_pos"]["head2"]
    assert 1e-5 <= summary["p10"] <= summary["p50"] <= summary["p90"] <= 2.0
    assert 0.0 <= history[-1]["probe_accuracy"] <= 1.0
