"""Backbones by name: keras.applications models and KerasHub's ViT as encoders (amcl_keras/backbones.py).

Each is checked for its input preprocessing, config validation, one training step, 2 replicas == 1 device, export
(SavedModel + ONNX, verified on real images) and a `.keras` round trip of a method model built on it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import backbones, config as config_lib, export
from tests.methods.helpers import one_step

APP = "keras.applications."
VIT = "keras_hub.ViTBackbone"
TINY_VIT = {"patch_size": 8, "hidden_dim": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64}
SHAPE = (32, 32, 3)  # the smallest input most applications accept

needs_keras_hub = pytest.mark.skipif(not backbones.keras_hub_available(),
                                     reason=f"keras-hub is not installed ({backbones.KERAS_HUB_INSTALL})")


def _encoder(name, shape=SHAPE, **kwargs):
    options = TINY_VIT if name == VIT else None
    return amcl.encoders.get(name, shape, options=options, **kwargs)


def _views(size=32, channels=3, batch=8, seed=0):
    """Two noisy views of `batch` distinct smooth images in [0, 1]."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, size, dtype="float32")
    freq = rng.uniform(1, 6, size=(batch, 1, 1, channels))
    phase = rng.uniform(0, 6.28, size=(batch, 1, 1, channels))
    base = 0.5 + 0.4 * np.sin(freq * grid[None, :, None, None] + phase) * np.cos(freq * grid[None, None, :, None])
    return tuple(np.clip(base + 0.05 * rng.normal(size=base.shape), 0, 1).astype("float32") for _ in range(2))


def _trainable(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


# --- preprocessing and configuration (no model is built) --------------------------------------------------------
def test_every_keras_application_has_a_known_preprocessing():
    names = backbones.application_names()
    assert len(names) >= 40 and {"ResNet50", "MobileNetV3Small", "EfficientNetV2B0", "ConvNeXtTiny"} <= set(names)
    assert {backbones.application_preprocessing(name) for name in names} == set(backbones.PREPROCESSING_MODES)


@pytest.mark.parametrize("module,mode", sorted(backbones.APPLICATION_PREPROCESSING.items()))
def test_preprocessing_equals_the_applications_own_on_0_255_images(module, mode, rng):
    """[0, 1] images through `ApplicationPreprocessing` = the application's `preprocess_input` on the same images
    ×255 (for "model" families `preprocess_input` is the identity: the model rescales inside)."""
    images = rng.uniform(size=(3, 5, 4, 3)).astype("float32")
    expected = np.asarray(getattr(keras.applications, module).preprocess_input(images * 255.0))
    got = np.asarray(backbones.ApplicationPreprocessing(mode)(images))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    gray = images[..., :1]
    np.testing.assert_array_equal(np.asarray(backbones.ApplicationPreprocessing(mode)(gray)),
                                  np.asarray(backbones.ApplicationPreprocessing(mode)(np.repeat(gray, 3, axis=-1))))


@pytest.mark.parametrize("overrides,message", [
    ([f"model.encoder={APP}ResNet5"], r"not a keras.applications model. Valid names include keras.applications.ResNet50"),
    ([f"model.encoder={APP}ResNet50", "model.encoder_weights=imagenet"],
     r"would download the ImageNet weights at run time.*set model.encoder_weights to its path"),
    ([f"model.encoder={APP}ResNet50", "model.encoder_weights=weights.npz"], r"expected a Keras weights file ending in .h5"),
    ([f"model.encoder={APP}MobileNetV3Small", "model.encoder_options={alpha: 0.75, depth: 2}"],
     r"\['depth'\] are not arguments of keras.applications.MobileNetV3Small.*'alpha', 'minimalistic'"),
    (["model.encoder=vit"], r"model.encoder='vit' is unknown: use one of \['resnet18_cifar', 'resnet50_cifar', "
                            r"'small_convnet'\], or a name such as keras.applications.ResNet50 or keras_hub.ViTBackbone"),
    (["model.encoder=keras_hub.SwinBackbone"], r"the KerasHub backbones amcl-keras builds are \['keras_hub.ViTBackbone'\]"),
    (["model.encoder_options={patch_size: 4}"], r"'small_convnet' takes no options"),
    (["model.encoder_options=4"], r"model.encoder_options must be a mapping"),
    (["model.encoder_weights=encoder.h5"], r"a .weights.h5 file saved from the same encoder"),
])
def test_bad_encoder_settings_are_refused_at_load_time(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load(None, overrides)


@needs_keras_hub
@pytest.mark.parametrize("options,message", [
    ("{patch: 4}", r"\['patch'\] are not options of keras_hub.ViTBackbone"),
    ("{num_layers: 0}", r"num_layers=0: it must be a positive integer"),
    ("{dropout_rate: 1.5}", r"dropout_rate=1.5: it must be a number in \[0, 1\)"),
    ("{pooling: max}", r"pooling='max': one of \('cls', 'mean'\)"),
    ("{hidden_dim: 30, num_heads: 4}", r"hidden_dim=30 must be divisible by num_heads=4"),
])
def test_bad_vit_options_are_refused_at_load_time(options, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load(None, [f"model.encoder={VIT}", f"model.encoder_options={options}"])


def test_missing_keras_hub_is_named_with_its_install_line(monkeypatch):
    monkeypatch.setattr(backbones, "keras_hub_available", lambda: False)
    with pytest.raises(config_lib.ConfigError, match=r"needs keras-hub.*pip install --no-deps -r requirements-keras-hub.txt"):
        config_lib.load(None, [f"model.encoder={VIT}"])


def test_cli_overrides_select_a_backbone_and_its_options():
    config = config_lib.load(None, [f"model.encoder={APP}MobileNetV3Small", "model.encoder_options={minimalistic: true}",
                                    "model.encoder_weights=/data/mobilenet_v3_small_notop.weights.h5"])
    assert config.model.encoder == f"{APP}MobileNetV3Small" and config.model.encoder_options == {"minimalistic": True}
    assert config_lib.from_dict(config.to_dict()).model == config.model  # the YAML written to a run reads back


def test_convnext_is_refused_for_onnx_export_at_load_time():
    with pytest.raises(config_lib.ConfigError, match=r"cannot be exported to ONNX.*export.formats=\[saved_model\]"):
        config_lib.load(None, [f"model.encoder={APP}ConvNeXtTiny"])
    with pytest.raises(config_lib.ConfigError, match=r"cannot be exported to ONNX.*drop \['onnx_int8'\]"):
        config_lib.load(None, [f"model.encoder={APP}ConvNeXtTiny", "export.formats=[saved_model, onnx_int8]"])
    config = config_lib.load(None, [f"model.encoder={APP}ConvNeXtTiny", "export.formats=[saved_model]"])
    assert config.export.formats == ("saved_model",)


# --- keras.applications encoders ------------------------------------------------------------------------------
def test_application_encoder_is_the_application_behind_its_preprocessing():
    encoder = _encoder(APP + "MobileNetV3Small")
    bare = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=SHAPE, pooling="avg")
    assert encoder.output.shape == (None, 576)
    assert _trainable(encoder) == _trainable(bare)  # the wrapper adds no weights
    assert [type(layer).__name__ for layer in encoder.layers] == ["InputLayer", "ApplicationPreprocessing", "Functional"]
    gray = _encoder(APP + "MobileNetV3Small", (32, 32, 1))  # grayscale is repeated to RGB
    gray.set_weights(encoder.get_weights())
    image = _views()[0][:2, :, :, :1]
    np.testing.assert_allclose(np.asarray(gray(image)), np.asarray(encoder(np.repeat(image, 3, axis=-1))), rtol=1e-6)


def test_synchronized_batch_norm_replaces_every_batch_norm_and_keeps_the_weights():
    plain = _encoder(APP + "MobileNetV3Small")
    synced = _encoder(APP + "MobileNetV3Small", synchronized_batch_norm=True)
    norms = [layer for layer in synced.layers[-1].layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 34 and all(type(n) is amcl.normalization.SyncBatchNormalization and n.synchronized for n in norms)
    assert not any(isinstance(layer, amcl.normalization.SyncBatchNormalization) for layer in plain.layers[-1].layers)
    assert [w.shape for w in synced.weights] == [w.shape for w in plain.weights]
    synced.set_weights(plain.get_weights())
    images = _views()[0]
    # one device: the same statistics; in training the swapped layers take TF's fused kernel (normalization.py),
    # which sums in another order than Keras's separate ops: equal to float32 round-off through ~50 layers
    for training, rtol in ((False, 1e-5), (True, 2e-4)):
        np.testing.assert_allclose(np.asarray(synced(images, training=training)),
                                   np.asarray(plain(images, training=training)), rtol=rtol, atol=2e-5)


def test_a_local_weights_file_is_loaded_and_a_missing_one_is_named(tmp_path):
    source = _encoder(APP + "MobileNetV3Small")
    path = str(tmp_path / "mobilenet_v3_small_notop.weights.h5")
    source.layers[-1].save_weights(path)  # the application itself, as a user would save it
    loaded = amcl.encoders.get(APP + "MobileNetV3Small", SHAPE, weights=path, synchronized_batch_norm=True)
    for a, b in zip(loaded.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="no such file"):
        amcl.encoders.get(APP + "MobileNetV3Small", SHAPE, weights=str(tmp_path / "missing.weights.h5"))
    small = amcl.encoders.small_convnet((8, 8, 1), width=4)  # a built-in encoder loads a file saved from itself
    small.save_weights(tmp_path / "small.weights.h5")
    again = amcl.encoders.get("small_convnet", (8, 8, 1), width=4, weights=str(tmp_path / "small.weights.h5"))
    for a, b in zip(again.get_weights(), small.get_weights()):
        np.testing.assert_array_equal(a, b)


# --- KerasHub ViT ---------------------------------------------------------------------------------------------
@needs_keras_hub
def test_vit_encoder_weight_count_and_pooling():
    """Weights counted from the architecture: patch conv p²·C·D + D, class token D, positions (N + 1)·D; per
    layer two layer norms 4D, attention 4(D² + D), MLP 2DM + M + D; the final layer norm 2D."""
    p, c, d, m, layers = 8, 3, 32, 64, 2
    n = (32 // p) ** 2
    expected = p * p * c * d + d + d + (n + 1) * d + layers * (4 * d + 4 * (d * d + d) + 2 * d * m + m + d) + 2 * d
    encoder = _encoder(VIT)
    assert encoder.output.shape == (None, 32) and _trainable(encoder) == expected
    mean = amcl.encoders.get(VIT, SHAPE, options={**TINY_VIT, "pooling": "mean"})
    assert mean.output.shape == (None, 32) and _trainable(mean) == expected - d - d  # no class token, one fewer position
    with pytest.raises(ValueError, match="not divisible by model.encoder_options.patch_size=8"):
        amcl.encoders.get(VIT, (28, 28, 1), options=TINY_VIT)


# --- training, replicas, export, saving ----------------------------------------------------------------------
def _simclr(name, strategy=None, synchronized=True):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        keras.utils.set_random_seed(3)
        encoder = _encoder(name, synchronized_batch_norm=synchronized)
        loss = amcl.losses.AMCLNTXentLoss(8, beta=0.01, top_k=5, temperature_hidden_dim=8)
        model = amcl.SimCLR(encoder, num_heads=2, projection_dim=8, hidden_dim=16, loss=loss)
        model.compile(optimizer=keras.optimizers.SGD(0.5, global_clipnorm=1.0))
    return model


# keras.applications.ResNet50 is left out of these two lists (it cost ~90 s of CI): its layers (convolution, batch
# norm, ReLU, add) are the built-in ResNets', trained and exported in tests/methods and tests/test_export.py, and the
# keras.applications path is the one MobileNetV3Small and EfficientNetV2B0 take; its step time is in the README.
TRAINED = [pytest.param(APP + "MobileNetV3Small", id="MobileNetV3Small"),
           pytest.param(APP + "EfficientNetV2B0", id="EfficientNetV2B0", marks=pytest.mark.slow),
           pytest.param(VIT, id="ViT", marks=needs_keras_hub)]


@pytest.mark.parametrize("name", TRAINED)
def test_one_amcl_simclr_step_trains_the_backbone(name):
    model = _simclr(name)
    before = model.encoder.get_weights()
    logs = one_step(model, *_views())
    assert np.isfinite(logs["loss"][0])
    moved = sum(not np.array_equal(b, a) for b, a in zip(before, model.encoder.get_weights()))
    assert moved > len(model.encoder.trainable_weights) // 2


@pytest.mark.parametrize("name", [pytest.param(VIT, id="ViT", marks=needs_keras_hub),
                                  pytest.param(APP + "MobileNetV3Small", id="MobileNetV3Small-syncBN",
                                               marks=pytest.mark.slow)])
def test_two_replicas_equal_one_device(name, two_replicas):
    """One clipped AMCL-SimCLR step on 2 replicas (synchronized batch norm) equals one device on the global batch
    (float32, the tolerance of tests/methods/test_distributed.py). ViT's position embedding has a sparse gradient
    (IndexedSlices, one gather per view): the trainer makes it dense, so clipping sees its true norm on both."""
    view1, view2 = _views()
    single, mirrored = _simclr(name), _simclr(name, two_replicas)
    before = single.get_weights()
    mirrored.set_weights(before)
    single_logs, mirrored_logs = one_step(single, view1, view2), one_step(mirrored, view1, view2)
    for key in single_logs:
        np.testing.assert_allclose(mirrored_logs[key], single_logs[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for variable, s, m in zip(single.weights, single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(m, s, rtol=0, atol=1e-5 * np.abs(s).max() + 1e-6, err_msg=variable.path)
    assert sum(not np.allclose(b, s) for b, s in zip(before, single.get_weights())) > 10


EXPORTED = [pytest.param(APP + "MobileNetV3Small", id="MobileNetV3Small"),
            pytest.param(APP + "EfficientNetV2B0", id="EfficientNetV2B0", marks=pytest.mark.slow),
            pytest.param(VIT, id="ViT", marks=needs_keras_hub)]


@pytest.mark.parametrize("name", EXPORTED)
def test_export_is_verified_on_real_images(name, tmp_path):
    """SavedModel and ONNX (tf2onnx) pass the exporter's own check on the shipped photos, and agree with Keras
    relative to the features' scale (a randomly initialised MobileNetV3's features are ~1e-10)."""
    encoder = _encoder(name)
    metadata = export.export_encoder(encoder, tmp_path / "export")
    assert metadata["feature_dim"] == encoder.output.shape[-1]
    images = export.verification_images(3)
    reference = np.asarray(encoder(amcl.data.to_float_images(images, 32)))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {metadata["formats"]["onnx"]["input_name"]: images})[0]
    assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()


@pytest.mark.parametrize("name", [pytest.param(APP + "MobileNetV3Small", id="MobileNetV3Small-syncBN"),
                                  pytest.param(VIT, id="ViT", marks=needs_keras_hub)])
def test_method_model_round_trips_through_a_keras_file(name, tmp_path):
    model = _simclr(name)
    one_step(model, *_views())  # trained weights and moving statistics, not the initial ones
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    images = _views(seed=1)[0]
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))
    np.testing.assert_array_equal(np.asarray(loaded.projector(loaded.encoder(images))),
                                  np.asarray(model.projector(model.encoder(images))))
    assert type(loaded.encoder.layers[1]) is type(model.encoder.layers[1])


CLI_ENCODERS = [
    pytest.param([f"model.encoder={VIT}", "model.encoder_options={patch_size: 7, hidden_dim: 16, num_layers: 1, "
                  "num_heads: 2, mlp_dim: 32, pooling: mean}"], id="ViT", marks=needs_keras_hub),
    # grayscale 28×28 photos, resized to the application's minimum of 32 and repeated to RGB inside the encoder
    pytest.param([f"model.encoder={APP}MobileNetV3Small", "model.encoder_options={minimalistic: true}",
                  "data.image_size=32", "model.synchronized_batch_norm=true"], id="MobileNetV3Small"),
]


@pytest.mark.slow
@pytest.mark.parametrize("settings", CLI_ENCODERS)
def test_amcl_train_from_the_command_line(settings, tmp_path):
    from amcl_keras import cli, runs

    run_dir = tmp_path / "run"
    overrides = settings + ["data.batch_size=16", "model.hidden_dim=16", "model.projection_dim=8", "eval.probe_epochs=1",
                            "eval.max_examples=64"]
    code = cli.main(["train", "--run-dir", str(run_dir), "--epochs", "1", "--steps-per-epoch", "2"]
                    + [arg for override in overrides for arg in ("--set", override)])
    assert code == 0
    assert (run_dir / "results.json").exists() and (run_dir / "export" / "encoder.onnx").exists()
    encoder, _ = runs.load_run(run_dir)  # the saved encoder reloads
    assert encoder.input.shape[1:3] == ((32, 32) if "data.image_size=32" in settings else (28, 28))
