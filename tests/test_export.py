import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from PIL import Image

import amcl_keras as amcl
from amcl_keras import cli, data, evaluation, export


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The tiny training run of conftest (3 SGD steps on the shipped photos)."""
    return tiny_run


def _keras_embedding(run_dir, images, size=28):
    encoder = keras.saving.load_model(run_dir / "encoder.keras", compile=False)
    return np.asarray(encoder(data.to_float_images(images, size), training=False))


def test_export_reloads_and_matches_keras_on_real_images(run_dir, tmp_path):
    out = tmp_path / "export"
    metadata = export.export_encoder(run_dir, out)
    assert sorted(p.name for p in out.iterdir()) == ["encoder.onnx", "metadata.json", "saved_model"]
    images = data.load_shipped("test")[0][100:107]  # not the images the exporter verified with
    expected = _keras_embedding(run_dir, images)
    loaded = tf.saved_model.load(str(out / "saved_model"))
    session = onnxruntime.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    input_name = metadata["formats"]["onnx"]["input_name"]
    for batch in (1, 7):
        saved = loaded.signatures["serving_default"](images=tf.constant(images[:batch]))["embedding"].numpy()
        onnx_out = session.run(["embedding"], {input_name: images[:batch]})[0]
        assert saved.dtype == np.float32 and onnx_out.dtype == np.float32
        assert saved.shape == onnx_out.shape == (batch, metadata["feature_dim"])
        np.testing.assert_allclose(saved, expected[:batch], atol=1e-4)
        np.testing.assert_allclose(onnx_out, expected[:batch], atol=1e-4)
    # the uint8 signature equals the library's own evaluation pipeline on the same images
    encoder = keras.saving.load_model(run_dir / "encoder.keras", compile=False)
    np.testing.assert_allclose(
        loaded.signatures["serving_default"](images=tf.constant(images))["embedding"].numpy(),
        evaluation.extract_features(encoder, images), atol=1e-4,
    )
    # metadata records the contract and the measured differences
    assert metadata["input"]["dtype"] == "uint8" and metadata["input"]["shape"] == [None, None, None, 1]
    assert metadata["output"] == {"name": "embedding", "dtype": "float32", "shape": [None, 16]}
    assert len(metadata["training_config_sha256"]) == 64
    assert all(v <= 1e-4 for d in metadata["verification"]["max_abs_diff"].values() for v in d.values())
    assert json.loads((out / "metadata.json").read_text()) == json.loads(json.dumps(metadata))


def test_larger_images_are_resized_inside_the_model(run_dir, tmp_path):
    export.export_encoder(run_dir, tmp_path / "e")
    images = data.load_shipped("test")[0][:7]
    large = np.asarray(tf.image.resize(images, (56, 56), method="nearest"), np.uint8)
    expected = _keras_embedding(run_dir, large)  # to_float_images resizes 56 → 28 bilinearly
    session = onnxruntime.InferenceSession(str(tmp_path / "e" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    np.testing.assert_allclose(session.run(["embedding"], {name: large})[0], expected, atol=1e-4)
    loaded = tf.saved_model.load(str(tmp_path / "e" / "saved_model"))
    np.testing.assert_allclose(
        loaded.signatures["serving_default"](images=tf.constant(large))["embedding"].numpy(), expected, atol=1e-4
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_encoder_exports_as_float32(policy, tmp_path):
    """Both 16-bit policies (mixed_bfloat16: what `train.mixed_precision: auto` may choose) export float32."""
    if policy == "mixed_bfloat16" and not amcl.autotune.native_bfloat16()[0]:
        pytest.skip("no native bfloat16 kernels on this machine")
    keras.mixed_precision.set_global_policy(policy)
    try:
        encoder = amcl.encoders.small_convnet((28, 28, 1), width=4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert encoder.layers[1].compute_dtype == policy.replace("mixed_", "")
    metadata = export.export_encoder(encoder, tmp_path / "mp")
    session = onnxruntime.InferenceSession(str(tmp_path / "mp" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].type == "tensor(float)"
    images = data.load_shipped("test")[0][:3]
    out = session.run(["embedding"], {session.get_inputs()[0].name: images})[0]
    assert out.dtype == np.float32
    # the float32 export equals a float32 computation with the same weights, not the float16 one
    float32_copy = export.float32_encoder(encoder)
    np.testing.assert_allclose(out, np.asarray(float32_copy(data.to_float_images(images))), atol=1e-5)
    assert metadata["output"]["dtype"] == "float32"


@pytest.mark.slow
def test_saved_model_cli_lists_the_serving_signature(run_dir, tmp_path):
    export.export_encoder(run_dir, tmp_path / "e", formats=["saved_model"])
    cli_path = pathlib.Path(sys.executable).with_name("saved_model_cli")
    command = [str(cli_path)] if cli_path.exists() else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    shown = subprocess.run(
        command + ["show", "--dir", str(tmp_path / "e" / "saved_model"), "--tag_set", "serve",
                   "--signature_def", "serving_default"],
        capture_output=True, text=True, timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    text = shown.stdout
    assert "dtype: DT_UINT8" in text and "shape: (-1, -1, -1, 1)" in text
    assert "embedding" in text and "dtype: DT_FLOAT" in text and "shape: (-1, 16)" in text


def test_missing_and_corrupt_run_directories(tmp_path, run_dir):
    with pytest.raises(export.ExportError, match="does not exist"):
        export.export_encoder(tmp_path / "nope", tmp_path / "out")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run_dir / "config.yaml", partial)
    with pytest.raises(export.ExportError, match="lacks encoder.keras"):
        export.export_encoder(partial, tmp_path / "out")
    (partial / "encoder.keras").write_bytes(b"not a keras file")
    with pytest.raises(export.ExportError, match="corrupt"):
        export.export_encoder(partial, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_verification_leaves_nothing(run_dir, tmp_path, monkeypatch):
    """An ONNX file from other weights must be caught, and no export folder must remain."""
    impostor = amcl.encoders.small_convnet((28, 28, 1), width=4)
    other = export.export_encoder(impostor, tmp_path / "other", formats=["onnx"])

    def write_other_weights(build, path):
        shutil.copy(tmp_path / "other" / "encoder.onnx", path)
        return {"input_name": other["formats"]["onnx"]["input_name"]}

    monkeypatch.setitem(export.FORMATS, "onnx", dataclasses.replace(export.FORMATS["onnx"], write=write_other_weights))
    with pytest.raises(export.ExportVerificationError, match="onnx max_abs_diff"):
        export.export_encoder(run_dir, tmp_path / "bad")
    assert sorted(os.listdir(tmp_path)) == ["other"]


def test_cli_export_and_overwrite(run_dir, capsys):
    out = run_dir / "export"
    shutil.rmtree(out, ignore_errors=True)
    assert cli.main(["export", str(run_dir)]) == 0
    assert "max |diff| vs Keras" in capsys.readouterr().out
    assert cli.main(["export", str(run_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["export", str(run_dir), "--overwrite", "--formats", "onnx"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["encoder.onnx", "metadata.json"]


@pytest.mark.parametrize("fmt", ["onnx", "onnx_int8"])
def test_onnx_client_finds_duplicate_images(run_dir, tmp_path, capsys, fmt):
    out = tmp_path / "e"
    export.export_encoder(run_dir, out, formats=[fmt])
    folder = tmp_path / "images"
    folder.mkdir()
    images, labels = data.load_shipped("test")
    for index in range(6):
        Image.fromarray(images[index, :, :, 0]).save(folder / f"img{index}_class{labels[index]}.png")
    shutil.copy(folder / "img2_class" f"{labels[2]}.png", folder / "copy_of_img2.png")
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "export"))
    try:
        import onnx_client
    finally:
        sys.path.pop(0)
    assert onnx_client.main([str(out), str(folder), "--top", "2", "--format", fmt]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "7 images, embedding size 16"
    copy_line = next(line for line in lines if line.startswith("copy_of_img2.png:"))
    assert copy_line.split(": ", 1)[1].startswith(f"img2_class{labels[2]}.png (1.000)")
    other = "onnx_int8" if fmt == "onnx" else "onnx"
    with pytest.raises(SystemExit, match=f"has no {other} model"):
        onnx_client.main([str(out), str(folder), "--format", other])


def test_a_non_square_encoder_exports_and_serves_in_every_format(tmp_path):
    """An encoder of input 24×40 (H ≠ W): every format's uint8 signature resizes to H×W (not H×H), checked against
    the Keras encoder itself — at the nominal size (the resize is the identity: float formats to round-off) and at
    another size (the same bilinear resize applied outside the artefact). int8 formats: their relative bound."""
    keras.utils.set_random_seed(0)
    encoder = amcl.encoders.small_convnet((24, 40, 3), width=4)
    out = tmp_path / "export"
    metadata = export.export_encoder(encoder, out, formats=list(amcl.constants.EXPORT_FORMATS))
    assert metadata["input"]["nominal_size"] == [24, 40]
    photos = export.verification_images(3)
    for size in ((24, 40), (36, 60)):
        images = tf.cast(tf.image.resize(photos, size), tf.uint8).numpy()
        expected = np.asarray(encoder(tf.image.resize(images.astype("float32") / 255.0, (24, 40)), training=False))
        for fmt in amcl.constants.EXPORT_FORMATS:
            got = export.open_artefact(out, fmt)(images)
            if fmt.endswith("_int8"):
                relative = np.linalg.norm(got - expected) / np.linalg.norm(expected)
                assert relative <= amcl.constants.EXPORT_INT8_TOLERANCE, (fmt, size, relative)
            else:
                np.testing.assert_allclose(got, expected, atol=amcl.constants.EXPORT_TOLERANCE, err_msg=f"{fmt} {size}")
