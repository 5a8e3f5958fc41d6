"""Online kNN monitor and the offline `amcl eval` command (first pieces of the evaluation issue)."""

import json

import keras
import numpy as np
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import cli, data, evaluation

TINY = [
    "--set", "data.batch_size=64", "--set", "model.encoder_width=4", "--set", "model.hidden_dim=32",
    "--set", "model.projection_dim=16", "--set", "eval.probe_epochs=2", "--set", "eval.max_examples=300",
    "--set", "export.formats=[]", "--steps-per-epoch", "3",
]


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


def test_report_png_for_one_and_two_runs(tmp_path, capsys):
    from PIL import Image

    runs = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        assert cli.main(["train", "--run-dir", str(run_dir), "--epochs", "2", "--set", "eval.knn_every=1", *TINY]) == 0
        runs.append(str(run_dir))
    for selection, out in ((runs[:1], tmp_path / "one.png"), (runs, tmp_path / "two.png")):
        assert cli.main(["report", *selection, "--out", str(out)]) == 0
        with Image.open(out) as image:
            assert image.size == (1200, 800)
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10, "the figure has content, not a blank canvas"
    assert cli.main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_similarity_samples_are_cosines_and_positives_are_more_alike(tmp_path):
    from amcl_keras import report

    run_dir = tmp_path / "r"
    assert cli.main(["train", "--run-dir", str(run_dir), "--epochs", "1", *TINY]) == 0
    positives, negatives = report.similarity_samples(run_dir, count=128)
    assert positives.shape == negatives.shape == (128,)
    assert np.all(np.abs(positives) <= 1 + 1e-5) and np.all(np.abs(negatives) <= 1 + 1e-5)
    assert positives.mean() > negatives.mean()
