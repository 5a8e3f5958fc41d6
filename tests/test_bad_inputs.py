"""The catalogue of bad inputs: each gives its own error type and a message that says what was
wrong and what to do, and leaves nothing half-written behind.

CLI cases run `amcl train` (or export/eval/report) and check the exit code, the message and
that the run directory was not created (or not changed); API cases check the exception type.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import cli
from amcl_keras.config import ConfigError

TINY = ["--epochs", "1", "--steps-per-epoch", "1", "--set", "data.batch_size=32", "--set", "model.encoder_width=4",
        "--set", "model.hidden_dim=16", "--set", "model.projection_dim=8", "--set", "eval.probe_epochs=1",
        "--set", "eval.max_examples=64", "--set", "export.formats=[]"]

# (case id, extra `amcl train` arguments, text the message must contain: what was wrong / what to do)
TRAIN_CASES = [
    ("unknown-key", ["--set", "model.num_head=3"], "Did you mean 'num_heads'?"),
    ("unknown-section", ["--set", "modle.num_heads=3"], "Did you mean 'model'?"),
    ("wrong-type-int", ["--set", "train.seed=ten"], "train.seed must be an integer, got 'ten'"),
    ("wrong-type-bool", ["--set", "model.amcl=maybe"], "model.amcl must be true or false"),
    ("wrong-type-list", ["--set", "data.crop_scale=0.5"], "must be a list of 2 numbers"),
    ("negative-temperature", ["--set", "model.temperature=-0.5"], "it must be > 0 (SimCLR uses 0.5"),
    ("temperature-min-above-max", ["--set", "model.temperature_min=3.0"], "0 < temperature_min < temperature_max"),
    ("negative-temperature-min", ["--set", "model.temperature_min=-1.0"], "0 < temperature_min"),
    ("top-k-zero", ["--set", "model.top_k=0"], "model.top_k=0 is out of range: it must be a positive integer"),
    ("no-heads", ["--set", "model.num_heads=0"], "model.num_heads=0 is out of range"),
    ("batch-over-replicas", ["--set", "train.cpu_replicas=3"], "divide evenly over train.cpu_replicas=3"),
    ("batch-of-one", ["--set", "data.batch_size=1"], "at least 2"),
    ("unknown-method", ["--set", "model.method=byol"], "one of ['barlow_twins', 'moco', 'simclr', 'simsiam']"),
    ("unknown-encoder", ["--set", "model.encoder=vit"], "one of ['resnet18_cifar', 'small_convnet']"),
    ("bad-preset", ["--set", "data.augmentation=xyz"], "Use 'simclr', 'strong' or letters"),
    ("bad-strategy", ["--set", "train.strategy=tpu"], "one of ('auto', 'default', 'mirrored', 'multi_worker')"),
    ("bad-precision", ["--set", "train.mixed_precision=float16"], "one of ('float32', 'mixed_float16', 'mixed_bfloat16')"),
    ("crop-scale-reversed", ["--set", "data.crop_scale=[0.9, 0.1]"], "0 < low <= high <= 1"),
    ("moco-queue-too-small", ["--method", "moco", "--set", "model.queue_size=16"], "use at least that"),
    ("bad-export-format", ["--set", "export.formats=[tflite]"], "a list drawn from ['saved_model', 'onnx']"),
    ("backup-every-zero", ["--set", "train.backup_every_steps=0"], "None (every epoch only) or >= 1"),
    ("negative-beta", ["--set", "model.beta=-1.0"], "model.beta=-1.0 is out of range: it must be >= 0"),
    ("override-without-value", ["--set", "train.epochs"], "must look like section.key=value"),
    ("missing-config-file", ["--config", "configs/nope.yaml"], "Configs ship in the configs/ folder"),
    ("missing-dataset-folder", ["--set", "data.dataset=./no/such/folder"], "does not exist"),
    ("missing-npz", ["--set", "data.dataset=./missing.npz"], "does not exist"),
    ("unknown-tfds-name", ["--set", "data.dataset=not_a_dataset_xyz", "--set", "data.download=false"],
     "Check the name and split"),
    ("batch-larger-than-data", ["--set", "data.batch_size=8192"], "lower data.batch_size"),
    ("xla-with-replicas", ["--set", "train.jit_compile=true", "--set", "train.cpu_replicas=2"],
     "Set train.jit_compile=false, or train on one device"),
    ("multi-worker-without-tf-config", ["--set", "train.strategy=multi_worker"], "needs the TF_CONFIG environment"),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[case[0] for case in TRAIN_CASES])
def test_bad_training_input(case, tmp_path, capsys, monkeypatch):
    _, arguments, expected = case
    monkeypatch.delenv("TF_CONFIG", raising=False)
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--run-dir", str(run_dir), *TINY, *arguments]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err
    assert not run_dir.exists(), "a failed start must not leave a half-made run directory"


def test_invalid_yaml_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert cli.main(["train", "--config", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    assert "is not valid YAML" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_empty_image_folder(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    assert cli.main(["train", "--run-dir", str(tmp_path / "run"), *TINY, "--set", f"data.dataset={tmp_path / 'images'}"]) == 2
    err = capsys.readouterr().err
    assert "no images" in err.lower() and not (tmp_path / "run").exists(), err


def test_unreadable_images_with_on_bad_image_error(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    assert cli.main(["train", "--run-dir", str(tmp_path / "run"), *TINY, "--set", f"data.dataset={folder}",
                     "--set", "data.on_bad_image=error"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "on_bad_image" in err and not (tmp_path / "run").exists(), err


def test_foreign_and_changed_run_directories_are_left_untouched(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert cli.main(["train", "--run-dir", str(foreign), *TINY]) == 2
    assert "not an amcl run" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("command", [["export", "{missing}"], ["eval", "{missing}"], ["report", "{missing}"]])
def test_commands_on_a_missing_run_directory(command, tmp_path, capsys):
    argv = [part.format(missing=tmp_path / "missing") for part in command]
    if argv[0] == "report":
        argv += ["--out", str(tmp_path / "r.png")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err or "not a run directory" in err, err
    assert not (tmp_path / "missing").exists() and not (tmp_path / "r.png").exists()


# --- the Python API ------------------------------------------------------------------------

def _encoder():
    return amcl.encoders.small_convnet((8, 8, 1), width=4)


API_CASES = [
    ("amcl-contradicts-loss", lambda: amcl.SimCLR(_encoder(), amcl=False, projection_dim=8,
                                                  loss=amcl.losses.AMCLNTXentLoss(8)), ValueError, "contradicts"),
    ("loss-dim-differs", lambda: amcl.SimCLR(_encoder(), projection_dim=8, loss=amcl.losses.AMCLNTXentLoss(16)),
     ValueError, "make them equal"),
    ("wrong-loss-family", lambda: amcl.SimCLR(_encoder(), projection_dim=8, loss=amcl.losses.SimSiamLoss()),
     TypeError, "must be a AMCLNTXentLoss or NTXentLoss"),
    ("encoder-not-a-layer", lambda: amcl.SimCLR("resnet", projection_dim=8), TypeError, "must be a Keras model"),
    ("encoder-without-pooling", lambda: amcl.SimCLR(
        keras.Model(*(lambda i: (i, keras.layers.Conv2D(2, 3)(i)))(keras.Input((8, 8, 1)))), projection_dim=8),
     ValueError, "End it with a pooling or flatten layer"),
    ("barlow-amcl-without-batch", lambda: amcl.BarlowTwins(_encoder(), projection_dim=8, hidden_dim=8),
     ValueError, "pass batch_size=<global batch>"),
    ("unknown-negatives", lambda: amcl.losses.AMCLNTXentLoss(8, negatives="all"), ValueError, "'topk'"),
    ("zero-projection-dim", lambda: amcl.AdaptiveTemperature(0), ValueError, "positive integer"),
    ("negative-beta", lambda: amcl.losses.AMCLNTXentLoss(8, beta=-1.0), ValueError, "The authors use 1e-4"),
    ("knn-every-zero", lambda: amcl.callbacks.KNNMonitor((np.zeros((1, 8, 8, 1)), [0]), None, every=0),
     ValueError, "at least 1 epoch"),
    ("probe-bad-arrays", lambda: amcl.callbacks.OnlineLinearProbe((np.zeros((3, 8, 8, 1)), [0]), (np.zeros((1, 8, 8, 1)), [0])),
     ValueError, "must be (images [N, H, W, C], labels [N])"),
    ("unknown-export-format", lambda: amcl.export.export_encoder(_encoder(), "/tmp/amcl-never", formats=["tflite"]),
     amcl.export.ExportError, "choose from"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[case[0] for case in API_CASES])
def test_bad_api_input(case):
    _, build, error_type, expected = case
    with pytest.raises(error_type) as raised:
        build()
    assert expected in str(raised.value), str(raised.value)


def test_barlow_twins_amcl_refuses_a_different_batch():
    loss = amcl.losses.AMCLBarlowTwinsLoss(8, batch_size=16)
    with pytest.raises(ValueError, match="built for a global batch of 16 .* got a global batch of 8. Keep the batch fixed"):
        loss(tf.zeros([8, 8]), tf.zeros([8, 8]))


def test_fit_on_single_images_explains_the_pairs(tmp_path):
    model = amcl.SimCLR(_encoder(), num_heads=1, projection_dim=8, hidden_dim=8)
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"give `fit` a dataset of \(view1, view2\) pairs"):
        model.fit(tf.data.Dataset.from_tensors(np.zeros((4, 8, 8, 1), "float32")), verbose=0)


def test_export_refuses_to_replace_without_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(amcl.export.ExportError, match="overwrite"):
        amcl.export.export_encoder(_encoder(), out, formats=["onnx"])
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_config_error_type_for_the_api(tmp_path):
    with pytest.raises(ConfigError, match="Unknown config key 'trian'"):
        amcl.config.from_dict({"trian": {}})
    config_path = tmp_path / "c.yaml"
    config_path.write_text(json.dumps({"model": {"top_k": 0}}))
    with pytest.raises(ConfigError, match="top_k"):
        amcl.config.load(config_path)
