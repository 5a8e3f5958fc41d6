"""The catalogue of bad inputs: each gives its own error type and a message that says what was
wrong and what to do, and leaves nothing half-written behind.

CLI cases run `amcl train` (or export/eval/report) and check the exit code, the message and
that the run directory was not created (or not changed); API cases check the exception type.
In the `amcl train` table, `{tmp}` is a folder holding `notes.txt` (a text file), `folder.npz`
(a folder), `garbage.npz` (bytes that are neither an .npz file nor UTF-8 text), `garbage.weights.h5`
(not HDF5).
"""

import dataclasses
import errno
import json
import os
import pathlib
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import backups, cli, registry, runs, train
from amcl_keras.config import ConfigError
from amcl_keras.constants import AUGMENTATION_PRESETS
from amcl_keras.backups import RunBackup
from tests.methods import helpers

TINY = ["--epochs", "1", "--steps-per-epoch", "1", "--set", "data.batch_size=32", "--set", "model.encoder_width=4",
        "--set", "model.hidden_dim=16", "--set", "model.projection_dim=8", "--set", "eval.probe_epochs=1",
        "--set", "eval.max_examples=64", "--set", "export.formats=[]"]

# (case id, extra `amcl train` arguments, text the message must contain: what was wrong / what to do); a method's own
# settings have their cases in its test file (tests/methods/test_<method>.py, through `check_bad_training_input`)
TRAIN_CASES = [
    ("unknown-key", ["--set", "model.num_head=3"], "Did you mean 'num_heads'?"),
    ("unknown-section", ["--set", "modle.num_heads=3"], "Did you mean 'model'?"),
    ("wrong-type-int", ["--set", "train.seed=ten"], "train.seed must be an integer, got 'ten'"),
    ("wrong-type-bool", ["--set", "model.amcl=maybe"], "model.amcl must be true or false"),
    ("wrong-type-list", ["--set", "data.crop_scale=0.5"], "must be a list of 2 numbers"),
    ("negative-temperature", ["--set", "model.temperature=-0.5"], "it must be > 0 (default 0.1; the paper uses 0.5"),
    ("temperature-min-above-max", ["--set", "model.temperature_min=3.0"], "0 < temperature_min < temperature_max"),
    ("negative-temperature-min", ["--set", "model.temperature_min=-1.0"], "0 < temperature_min"),
    ("top-k-zero", ["--set", "model.top_k=0"], "model.top_k=0 is out of range: it must be a positive integer"),
    ("no-heads", ["--set", "model.num_heads=0"], "model.num_heads=0 is out of range"),
    ("batch-over-replicas", ["--set", "train.cpu_replicas=3"], "divide evenly over train.cpu_replicas=3"),
    ("batch-of-one", ["--set", "data.batch_size=1"], "at least 2"),
    ("unknown-method", ["--set", "model.method=byol"], f"model.method='byol' is out of range: one of {sorted(registry.names())}"),
    ("unknown-encoder", ["--set", "model.encoder=vit"], "one of ['resnet18_cifar', 'resnet50_cifar', 'small_convnet']"),
    ("bad-preset", ["--set", "data.augmentation=xyz"], f"Use {', '.join(map(repr, AUGMENTATION_PRESETS))} or letters"),
    ("bad-strategy", ["--set", "train.strategy=tpu"], "one of ('auto', 'default', 'mirrored', 'multi_worker')"),
    ("bad-precision", ["--set", "train.mixed_precision=float16"], "one of ('auto', 'float32', 'mixed_float16', 'mixed_bfloat16')"),
    ("crop-scale-reversed", ["--set", "data.crop_scale=[0.9, 0.1]"], "0 < low <= high <= 1"),
    ("bad-export-format", ["--set", "export.formats=[tflite]"],
     "a list drawn from ['saved_model', 'onnx', 'onnx_int8', 'litert', 'litert_int8']"),
    ("backup-every-zero", ["--set", "train.backup_every_steps=0"], "None (every epoch only) or >= 1"),
    ("negative-beta", ["--set", "model.beta=-1.0"], "model.beta=-1.0 is out of range: it must be >= 0"),
    ("override-without-value", ["--set", "train.epochs"], "must look like section.key=value"),
    ("missing-config-file", ["--config", "configs/nope.yaml"], "is not the name of a shipped config (`amcl configs`"),
    ("missing-dataset-folder", ["--set", "data.dataset=./no/such/folder"], "does not exist"),
    ("missing-npz", ["--set", "data.dataset=./missing.npz"], "does not exist"),
    # weights files that are not Keras weights (h5py alone says "file signature not found")
    ("weights-not-hdf5", ["--set", "model.encoder_weights={tmp}/garbage.weights.h5"],
     "could not be loaded into encoder 'small_convnet'"),
    ("application-weights-not-hdf5", ["--set", "model.encoder=keras.applications.MobileNetV3Small", "--set",
                                      "data.image_size=32", "--set", "model.encoder_weights={tmp}/garbage.weights.h5"],
     "Expected a Keras weights file (HDF5)"),
    ("application-input-too-small", ["--set", "model.encoder=keras.applications.MobileNetV3Small"],
     "cannot be built for images of 28x28: Input size must be at least 32x32"),
    ("misspelt-application", ["--set", "model.encoder=keras.applications.ResNet5"], "Valid names include"),
    ("unknown-keras-hub-backbone", ["--set", "model.encoder=keras_hub.ViTT"], "the KerasHub backbones amcl-keras builds"),
    ("encoder-options-for-small-convnet", ["--set", 'model.encoder_options={"widht": 3}'],
     "'small_convnet' takes no options (they are for keras.applications.<Model> and keras_hub.<Model>); use model.encoder_width"),
    ("encoder-options-not-a-mapping", ["--set", "model.encoder_options=5"], "must be a mapping of names to values"),
    ("keras-hub-misspelt-option", ["--set", "model.encoder=keras_hub.ViTBackbone", "--set",
                                   'model.encoder_options={"patch_sise": 4}'],
     "['patch_sise'] are not options of keras_hub.ViTBackbone; those are {'patch_size': 4"),
    ("keras-hub-patch-not-dividing-the-image", ["--set", "model.encoder=keras_hub.ViTBackbone", "--set",
                                                 'model.encoder_options={"patch_size": 5}'],
     "The image height 28 is not divisible by model.encoder_options.patch_size=5"),
    ("unknown-evaluation-split", ["--set", "data.eval_test_split=nope"], "has the splits 'train' and 'test', got split='nope'"),
    ("objective-not-for-method", ["--set", "model.objective=weighted"],
     f"one of ('authors', 'normalized', 'rectified') for {helpers.DEFAULT_METHOD}"),
    ("stop-gradient-not-bool", ["--set", "model.temperature_stop_gradient=maybe"], "must be true or false"),
    ("unknown-tfds-name", ["--set", "data.dataset=not_a_dataset_xyz", "--set", "data.download=false"],
     "Check the name and split"),
    ("batch-larger-than-data", ["--set", "data.batch_size=8192"], "lower data.batch_size"),
    ("xla-with-replicas", ["--set", "train.jit_compile=true", "--set", "train.cpu_replicas=2"],
     "Set train.jit_compile=false, or train on one device"),
    ("deterministic-with-xla", ["--set", "train.deterministic=true", "--set", "train.jit_compile=true"],
     "bit-identical reruns are verified without XLA only. Set train.jit_compile=auto"),
    ("multi-worker-without-tf-config", ["--set", "train.strategy=multi_worker"], "needs the TF_CONFIG environment"),
    # a folder where a file is expected, and the other way round
    ("config-is-a-folder", ["--config", "{tmp}"], "is a folder, not a YAML file"),
    ("config-is-not-text", ["--config", "{tmp}/garbage.npz"], "is not a text file"),
    ("config-under-a-file", ["--config", "{tmp}/notes.txt/c.yaml"], "a folder on its path is a file"),
    ("dataset-npz-is-a-folder", ["--set", "data.dataset={tmp}/folder.npz"], "folder.npz' is a folder. Give"),
    ("dataset-is-a-text-file", ["--set", "data.dataset={tmp}/notes.txt"], "is a file but not an .npz file"),
    ("dataset-npz-is-garbage", ["--set", "data.dataset={tmp}/garbage.npz"], "is not a readable .npz file"),
    ("run-dir-is-a-file", ["--run-dir", "{tmp}/notes.txt"], "notes.txt' is a file, not a folder. Choose another --run-dir"),
    ("run-dir-under-a-file", ["--run-dir", "{tmp}/notes.txt/run"], "is a file, so no folder can be made under it"),
]


def _path_fixtures(folder):
    """`notes.txt` (text), `folder.npz` (a folder), `garbage.npz` (neither .npz nor UTF-8), `garbage.weights.h5`
    (not HDF5) in `folder`."""
    (folder / "notes.txt").write_text("mine")
    (folder / "folder.npz").mkdir()
    (folder / "garbage.npz").write_bytes(b"\xff\xfe\x00not a zip")
    (folder / "garbage.weights.h5").write_bytes(b"\x00not an HDF5 file")
    return folder


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[case[0] for case in TRAIN_CASES])
def test_bad_training_input(case, tmp_path, capsys, monkeypatch):
    _, arguments, expected = case
    check_bad_training_input(arguments, expected, tmp_path, capsys, monkeypatch)


def check_bad_training_input(arguments, expected, tmp_path, capsys, monkeypatch):
    """`amcl train` with `arguments` (after TINY) exits 2 with `expected` in its message, no traceback, no run
    directory and the files of `_path_fixtures` untouched (also for the cases in the methods' test files)."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    (tmp_path / "paths").mkdir()
    paths = _path_fixtures(tmp_path / "paths")
    arguments = [argument.replace("{tmp}", str(paths)) for argument in arguments]
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--run-dir", str(run_dir), *TINY, *arguments]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err and "partial-" not in err
    assert not run_dir.exists(), "a failed start must not leave a half-made run directory"
    assert sorted(p.name for p in paths.iterdir()) == ["folder.npz", "garbage.npz", "garbage.weights.h5", "notes.txt"]
    assert (paths / "notes.txt").read_text() == "mine"


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


@pytest.mark.parametrize("command", ["export", "eval", "report"])
def test_commands_on_a_file_instead_of_a_run_directory(command, tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    argv = [command, str(tmp_path / "results.json")] + (["--out", str(tmp_path / "r.png")] if command == "report" else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "results.json' is a file, not a run directory. Pass the folder `amcl train` wrote" in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize("arguments, expected", [
    (["--out", "{tmp}/notes.txt/preview.png"], "Not a directory: '{tmp}/notes.txt/preview.png'"),
    (["--out", "{tmp}/folder.png"], "Is a directory: '{tmp}/folder.png'"),
    (["--set", "data.dataset={tmp}/folder.npz"], "is a folder"),
], ids=["out-under-a-file", "out-is-a-folder", "dataset-is-a-folder"])
def test_augment_preview_paths(arguments, expected, tmp_path, capsys):
    paths = _path_fixtures(tmp_path)
    (paths / "folder.png").mkdir()
    argv = ["augment-preview", "--count", "2", "--out", str(tmp_path / "p.png")]
    assert cli.main(argv + [a.replace("{tmp}", str(paths)) for a in arguments]) == 2
    err = capsys.readouterr().err
    assert expected.replace("{tmp}", str(paths)) in err and "Traceback" not in err, err


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


# --- encoders whose output is not [batch, features], of every kind of Keras model --------------------

class FeatureMapEncoder(keras.Model):
    """A subclassed encoder that forgot its pooling layer (or returns a dict)."""

    def __init__(self, as_dict=False):
        super().__init__()
        self.as_dict = as_dict
        self.conv = keras.layers.Conv2D(2, 3)

    def call(self, images, training=False):
        features = self.conv(images)
        return {"features": keras.layers.Flatten()(features)} if self.as_dict else features


def _functional(output):
    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, output(inputs))


def _simclr(encoder):
    model = amcl.SimCLR(encoder, num_heads=1, projection_dim=8, hidden_dim=8)
    model.compile(optimizer="sgd")
    return model


def _first_fit(encoder):
    """The encoder's model trained on one batch, without an explicit `build`."""
    _simclr(encoder).fit(tf.data.Dataset.from_tensors(helpers.views()), verbose=0)


ENCODER_CASES = [
    ("sequential-with-input", lambda: _simclr(keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3)])),
     "got output shape (2, 6, 6, 4) for input shape (None, 8, 8, 1)"),
    ("sequential-unbuilt-build", lambda: _simclr(keras.Sequential([keras.layers.Conv2D(4, 3)])).build((None, 8, 8, 1)),
     "got output shape (2, 6, 6, 4) for input shape (None, 8, 8, 1)"),
    ("sequential-unbuilt-first-fit", lambda: _first_fit(keras.Sequential([keras.layers.Conv2D(4, 3)])),
     "got output shape (8, 6, 6, 4)"),
    ("functional-feature-map", lambda: _simclr(_functional(keras.layers.Conv2D(2, 3))), "got output shape (None, 6, 6, 2)"),
    ("functional-sequence", lambda: _simclr(_functional(keras.layers.Reshape((8, 8)))), "got output shape (None, 8, 8)"),
    ("functional-two-outputs", lambda: _simclr(_functional(lambda x: [keras.layers.Flatten()(x)] * 2)),
     "got several outputs of shapes [(None, 64), (None, 64)]"),
    ("subclassed-build", lambda: _simclr(FeatureMapEncoder()).build((None, 8, 8, 1)), "got output shape (2, 6, 6, 2)"),
    ("subclassed-first-fit", lambda: _first_fit(FeatureMapEncoder()), "got output shape (8, 6, 6, 2)"),
    ("subclassed-dict-output", lambda: _simclr(FeatureMapEncoder(as_dict=True)).build((None, 8, 8, 1)),
     "got several outputs of shapes {'features': (2, 72)}"),
    ("plain-layer", lambda: _simclr(keras.layers.Conv2D(4, 3)).build((None, 8, 8, 1)), "got output shape (2, 6, 6, 4)"),
]


@pytest.mark.parametrize("case", ENCODER_CASES, ids=[case[0] for case in ENCODER_CASES])
def test_encoder_output_must_be_batch_by_features(case):
    _, build, expected = case
    with pytest.raises(ValueError) as raised:
        build()
    message = str(raised.value)
    assert message.startswith("The encoder must output [batch, features], ") and expected in message, message
    assert "End it with a pooling or flatten layer" in message


# --- a run directory or export folder that cannot be created -----------------------------------------

def _tiny_config():
    """TINY as a `Config`."""
    return amcl.config.load(None, ["train.epochs=1", "train.steps_per_epoch=1"]
                            + [value for key, value in zip(TINY, TINY[1:]) if key == "--set"])


@pytest.mark.parametrize("where", ["is-a-file", "under-a-file"])
def test_api_run_directory_that_cannot_be_created(where, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    run_dir = tmp_path / "notes.txt" if where == "is-a-file" else tmp_path / "notes.txt" / "run"
    with pytest.raises(runs.RunWriteError) as raised:
        train.run(_tiny_config(), run_dir)
    assert str(run_dir) in str(raised.value) and "Choose another --run-dir" in str(raised.value)
    assert raised.value.errno == errno.ENOTDIR and isinstance(raised.value, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["is-a-file", "under-a-file"])
def test_api_export_folder_that_cannot_be_created(where, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" if where == "is-a-file" else tmp_path / "notes.txt" / "export"
    with pytest.raises(amcl.export.ExportWriteError, match="Choose another output folder") as raised:
        amcl.export.export_encoder(_encoder(), out, formats=["onnx"], overwrite=True)
    assert str(out) in str(raised.value) and "partial" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def _finished_looking_run(folder):
    """A folder `amcl export` accepts: config.yaml and encoder.keras (no training)."""
    folder.mkdir()
    amcl.config.Config().dump(folder / runs.CONFIG)
    amcl.encoders.small_convnet((28, 28, 1), width=4).save(folder / runs.ENCODER)
    return folder


def test_cli_export_to_a_folder_under_a_file(tmp_path, capsys):
    run_dir = _finished_looking_run(tmp_path / "run")
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "notes.txt" / "export"), "--formats", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "cannot be created: " in err and "notes.txt' is a file" in err and "Traceback" not in err, err
    assert "partial" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli.main(["train", "--run-dir", str(locked / "run"), *TINY]) == 2
        assert "is not writable" in capsys.readouterr().err
        with pytest.raises(amcl.export.ExportWriteError, match="is not writable"):
            amcl.export.export_encoder(_encoder(), locked / "export", formats=["onnx"])
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


# --- a full disk or a refused write: a clear error, the previous backup / export intact ---------------

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_a_backup_keeps_the_previous_one(tmp_path, monkeypatch):
    model = helpers.build(helpers.DEFAULT_METHOD, True)
    backup = RunBackup(tmp_path, every_steps=1)
    backup.set_model(model)
    backup.save(0, 1)
    before = (tmp_path / "state.json").read_text()
    monkeypatch.setattr(model, "save_weights", _no_space)
    with pytest.raises(runs.RunWriteError) as raised:
        backup.save(0, 2)
    message = str(raised.value)
    assert f"Could not write {str(tmp_path / 'backup-e0-s2.weights.h5')!r}: No space left on device" in message
    assert "partial-" not in message and raised.value.errno == errno.ENOSPC
    assert (tmp_path / "state.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup-e0-s1.weights.h5", "state.json"]
    assert RunBackup.restore(helpers.build(helpers.DEFAULT_METHOD, True), tmp_path)["step"] == 1


def test_full_disk_while_committing_a_backup_keeps_the_previous_one(tmp_path, monkeypatch):
    model = helpers.build(helpers.DEFAULT_METHOD, True)
    backup = RunBackup(tmp_path, every_steps=1)
    backup.set_model(model)
    backup.save(0, 1)
    real_write_text = pathlib.Path.write_text

    def write_text(path, *args, **kwargs):
        if path.name.endswith("state.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write_text(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    with pytest.raises(runs.RunWriteError, match=r"state.json' \(its previous version is kept\): No space left"):
        backup.save(0, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup-e0-s1.weights.h5", "state.json"]
    assert RunBackup.restore(helpers.build(helpers.DEFAULT_METHOD, True), tmp_path)["step"] == 1


def test_cli_full_disk_while_backing_up(tmp_path, capsys, monkeypatch):
    real_save = keras.Model.save_weights

    def save_weights(model, path, *args, **kwargs):
        if "backup" in str(path):
            _no_space()
        return real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--run-dir", str(run_dir), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"Could not write {str(run_dir / 'backup' / 'backup-e1-s0.weights.h5')!r}: No space left on device" in err
    assert "re-run the same command" in err and "Traceback" not in err, err
    assert not list(run_dir.rglob("partial-*")) and not (run_dir / runs.RESULTS).exists()


def test_full_disk_while_exporting_keeps_the_previous_export(tmp_path, monkeypatch):
    out = tmp_path / "export"
    amcl.export.export_encoder(_encoder(), out, formats=["onnx"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setitem(amcl.export.FORMATS, "onnx", dataclasses.replace(amcl.export.FORMATS["onnx"], write=_no_space))
    with pytest.raises(amcl.export.ExportWriteError) as raised:
        amcl.export.export_encoder(_encoder(), out, formats=["onnx"], overwrite=True)
    message = str(raised.value)
    assert f"Could not write the export to {str(out)!r}: No space left on device" in message, message
    assert "previous export there is left as it was" in message and "partial" not in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging folder left


def test_failed_final_rename_puts_the_previous_export_back(tmp_path, monkeypatch):
    out = tmp_path / "export"
    amcl.export.export_encoder(_encoder(), out, formats=["onnx"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def replace(source, target):
        if ".partial-" in str(source):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(source))
        return real_replace(source, target)

    monkeypatch.setattr(amcl.export.os, "replace", replace)
    with pytest.raises(amcl.export.ExportWriteError, match="Permission denied") as raised:
        amcl.export.export_encoder(_encoder(), out, formats=["onnx"], overwrite=True)
    assert "partial" not in str(raised.value)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# --- a truncated or corrupt backup ----------------------------------------------------------------------

class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory):
    """A run of 2 epochs stopped before its final stage: backups after epoch 1 (previous) and 2 (latest)."""
    run_dir = tmp_path_factory.mktemp("unfinished") / "run"

    def stop(*args, **kwargs):
        raise _Stop()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "finish", stop)
        # an exception amcl does not expect: reported as a bug (exit 1), with what was trained kept
        assert cli.main(["train", "--run-dir", str(run_dir), *TINY, "--epochs", "2"]) == 1
    state = json.loads((run_dir / "backup" / "state.json").read_text())
    assert (state["epoch"], state["previous"]["epoch"]) == (2, 1)
    return run_dir


def _copy(run_dir, tmp_path):
    return pathlib.Path(shutil.copytree(run_dir, tmp_path / "run"))


@pytest.mark.parametrize("change, shown", [
    (["--method", helpers.ANOTHER_METHOD], f"model.method: {helpers.DEFAULT_METHOD!r} -> {helpers.ANOTHER_METHOD!r}"),
    (["--set", "model.encoder=resnet18_cifar"], "model.encoder: 'small_convnet' -> 'resnet18_cifar'"),
])
def test_resuming_after_the_method_or_backbone_changed_is_refused(change, shown, unfinished_run, tmp_path, capsys):
    """Its backups hold another model's weights: the run is refused, naming the change and the ways out, and
    nothing in it is touched."""
    run_dir = _copy(unfinished_run, tmp_path)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert cli.main(["train", "--run-dir", str(run_dir), *TINY, "--epochs", "2", *change]) == 2
    message = capsys.readouterr().err
    assert "holds a run with a different config (" in message and "Re-run with the same config to resume" in message
    # the changes, "key: old -> new" in key order (another method brings its own settings and defaults along)
    assert shown in message.split("holds a run with a different config (", 1)[1].split(")", 1)[0].split("; "), message
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def _truncate(path):
    path.write_bytes(path.read_bytes()[:500])


def test_truncated_latest_backup_resumes_from_the_previous_one(unfinished_run, tmp_path, capsys, caplog):
    run_dir = _copy(unfinished_run, tmp_path)
    _truncate(run_dir / "backup" / "backup-e2-s0.weights.h5")
    assert cli.main(["train", "--run-dir", str(run_dir), *TINY, "--epochs", "2"]) == 0
    assert "1 epoch(s) done" in capsys.readouterr().err
    assert "resuming from the previous one instead (epoch 1, step 0)" in caplog.text
    results = json.loads((run_dir / runs.RESULTS).read_text())
    assert results["resumed_from"] == {"epoch": 1, "step": 0}
    assert [record["epoch"] for record in runs.read_history(run_dir)] == [1, 2]


def test_restore_falls_back_and_drops_the_unreadable_backup(tmp_path):
    model = helpers.build(helpers.DEFAULT_METHOD, True)
    backup = RunBackup(tmp_path, every_steps=1)
    backup.set_model(model)
    backup.save(0, 1)
    backup.save(0, 2)
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["backup-e0-s1.weights.h5", "backup-e0-s2.weights.h5"]
    _truncate(tmp_path / "backup-e0-s2.weights.h5")
    fresh = helpers.build(helpers.DEFAULT_METHOD, True)
    assert RunBackup.restore(fresh, tmp_path) == {"epoch": 0, "step": 1, "weights": "backup-e0-s1.weights.h5"}
    resumed = RunBackup(tmp_path, every_steps=1, initial_step=1)
    resumed.set_model(fresh)
    resumed.save(0, 3)  # the truncated file is not kept as a fallback
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["backup-e0-s1.weights.h5", "backup-e0-s3.weights.h5"]
    assert RunBackup.backups(tmp_path)[1]["weights"] == "backup-e0-s1.weights.h5"


@pytest.mark.parametrize("damage", ["both-weights-truncated", "state-json-garbage", "state-json-not-a-backup"])
def test_unreadable_backup_stops_with_a_clear_message(damage, unfinished_run, tmp_path, capsys):
    run_dir = _copy(unfinished_run, tmp_path)
    backup = run_dir / "backup"
    if damage == "both-weights-truncated":
        for path in backup.glob("*.h5"):
            _truncate(path)
        expected = ["cannot be loaded", "backup-e2-s0.weights.h5", "backup-e1-s0.weights.h5"]
    else:
        (backup / "state.json").write_text('{"epoch": 2, "st' if damage == "state-json-garbage" else "[1, 2]")
        expected = [f"The backup state {str(backup / 'state.json')!r} cannot be read"]
    listing = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    assert cli.main(["train", "--run-dir", str(run_dir), *TINY, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    for text in expected + ["Pass --overwrite to start the run over", f"delete the folder {str(backup)!r}"]:
        assert text in err, err
    assert "Traceback" not in err
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == listing  # nothing changed or removed
    with pytest.raises(runs.RunDirectoryError, match="--overwrite"):
        RunBackup.restore(helpers.build(helpers.DEFAULT_METHOD, True), backup)


def test_a_history_line_cut_short_is_dropped_on_resume(tmp_path):
    (tmp_path / runs.HISTORY).write_text('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "lo')
    backups.trim_history(tmp_path, 2)
    assert runs.read_history(tmp_path) == [{"epoch": 1, "loss": 1.0}]


# --- exported artefacts that are damaged, absent or of the wrong kind (`amcl eval --artefact`) -----------------

@pytest.fixture(scope="module")
def exported_run(tiny_run, tmp_path_factory):
    """A copy of conftest's tiny run with an ONNX export (the tests below damage their own copies)."""
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(tiny_run, run)
    amcl.export.export_encoder(str(run), run / "export", formats=["onnx"])
    return run


@pytest.mark.parametrize("damage,expected", [
    ("truncated-onnx", "cannot be opened"),
    ("onnx-is-a-text-file", "cannot be opened"),
    ("metadata-not-json", "is corrupt"),
    ("format-not-exported", "has the formats ['onnx'], not 'litert'"),
    ("artefact-deleted", "onnx"),
])
def test_eval_on_a_damaged_or_absent_artefact(damage, expected, exported_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    artefact, fmt = run / "export" / "encoder.onnx", "onnx"
    if damage == "truncated-onnx":
        artefact.write_bytes(artefact.read_bytes()[:200])
    elif damage == "onnx-is-a-text-file":
        artefact.write_text("this is not an ONNX model")
    elif damage == "metadata-not-json":
        (run / "export" / "metadata.json").write_text("{not json")
    elif damage == "format-not-exported":
        fmt = "litert"
    else:
        artefact.unlink()
    assert cli.main(["eval", str(run), "--artefact", fmt]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and "bug" not in err, err
    assert not (run / f"eval-{fmt}.json").exists()


@pytest.mark.parametrize("images,shown", [
    (np.zeros((8, 28, 28, 1), "float32"), "float32 (8, 28, 28, 1)"),
    (np.zeros((3, 28, 28, 1), "uint8"), "uint8 (3, 28, 28, 1)"),
    (np.zeros((8, 28, 28, 3), "uint8"), "uint8 (8, 28, 28, 3)"),
    (np.zeros((8, 28), "uint8"), "uint8 (8, 28)"),
], ids=["float", "too-few", "wrong-channels", "wrong-rank"])
def test_int8_calibration_and_verification_images_of_the_wrong_kind(images, shown, tiny_run, tmp_path):
    with pytest.raises(amcl.export.ExportError, match=r"must be uint8 \[N >= 7, H, W, 1\], got " + re.escape(shown)):
        amcl.export.export_encoder(str(tiny_run), tmp_path / "out", formats=["onnx_int8"], images=images)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, environ, refused", [
    (["avx2", "fma"], {}, "this CPU has no native bfloat16 instructions"),
    (["avx2", "avx512f", "avx512_bf16"], {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "capped to ONEDNN_MAX_CPU_ISA=AVX2"),
    (["avx2", "avx512f", "avx512_bf16"], {}, None),
    (["avx2", "amx_bf16"], {"ONEDNN_MAX_CPU_ISA": "ALL"}, None),
    (["avx2"], {"TF_ENABLE_ONEDNN_OPTS": "0"}, None),  # Eigen's kernels
])
def test_mixed_bfloat16_without_native_kernels_is_refused_up_front(flags, environ, refused):
    """oneDNN without bfloat16 instructions fails inside the first convolution ("could not create a primitive
    descriptor"): the precision is refused before anything runs, saying why and what to use."""
    from amcl_keras.distribute import check_precision

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU computes bfloat16 itself")
    check_precision("float32", flags, environ)  # nothing to check
    if refused is None:
        check_precision("mixed_bfloat16", flags, environ)
        return
    with pytest.raises(amcl.errors.EnvironmentProblemError, match=refused) as error:
        check_precision("mixed_bfloat16", flags, environ)
    assert "Use train.mixed_precision=auto (the default" in str(error.value) and "or float32" in str(error.value)


def test_cli_mixed_bfloat16_under_an_avx2_cap_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    """The case that used to end in oneDNN's raw traceback and "a bug in amcl-keras" (exit 1)."""
    try:
        flags = next(line for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pytest.skip("no x86 CPU flags to read")
    assert flags  # with or without native bfloat16, the AVX2 cap refuses it
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU computes bfloat16 itself")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # read by the check (and by oneDNN, were it to start after it)
    code = cli.main(["train", "--run-dir", str(tmp_path / "run"), *TINY, "--set", "train.mixed_precision=mixed_bfloat16"])
    assert code == 2
    message = capsys.readouterr().err
    assert "mixed_bfloat16 cannot run on this machine" in message and "Traceback" not in message
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_second_sigterm_while_the_first_backup_is_written(tmp_path):
    """Pre-emption: SIGTERM during step 1, and again while the backup it asked for is being written (a scheduler
    that repeats itself): the backup completes, training stops once with RunPreempted, and the backup restores."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")  # the SIGTERM would end the worker
    model = helpers.build(helpers.DEFAULT_METHOD, True)
    backup = RunBackup(tmp_path, every_steps=None, preemptible=True)
    writes = []

    class SendSIGTERM(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                os.kill(os.getpid(), signal.SIGTERM)  # the first

    original = model.save_weights

    def save_weights(path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the second, in the middle of writing
        writes.append(path)
        return original(path, *args, **kwargs)

    model.save_weights = save_weights
    previous = signal.getsignal(signal.SIGTERM)
    view1, view2 = helpers.views()
    with pytest.raises(backups.RunPreempted, match="Stopped by SIGTERM after epoch 0 \\+ 1 step"):
        model.fit(tf.data.Dataset.from_tensors((view1, view2)).repeat(4), epochs=1, verbose=0,
                  callbacks=[SendSIGTERM(), backup])
    assert len(writes) == 1  # one backup, not one per signal
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is put back
    state = RunBackup.restore(helpers.build(helpers.DEFAULT_METHOD, True), tmp_path)
    assert (state["epoch"], state["step"]) == (0, 1)
