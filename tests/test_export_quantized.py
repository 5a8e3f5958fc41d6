"""LiteRT (float32, int8) and int8 ONNX exports, and `amcl eval --artefact` on exported artefacts.

Each artefact is run here with its own runtime (tf.lite.Interpreter, onnxruntime), not through the
exporter's runners, on shipped photos the exporter did not verify with.
"""

import dataclasses
import json
import shutil
import warnings

import keras
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import cli, data, evaluation, export
from amcl_keras.constants import EXPORT_INT8_TOLERANCE, EXPORT_TOLERANCE

NEW_FORMATS = ["onnx_int8", "litert", "litert_int8"]
FILES = {"onnx_int8": "encoder_int8.onnx", "litert": "encoder.tflite", "litert_int8": "encoder_int8.tflite"}


def _keras_embedding(run_dir, images):
    encoder = keras.saving.load_model(run_dir / "encoder.keras", compile=False)
    return np.asarray(encoder(data.to_float_images(images, 28), training=False))


def _relative_error(got, expected):
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def _run_litert(path, images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice (ai_edge_litert)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    return runner(images=images)["embedding"]


def _run_onnx(path, images):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {session.get_inputs()[0].name: images})[0]


def _copy_run(run_dir, target):
    """The run without its export and evaluations, so a test can write its own."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("export", "eval*.json", "tensorboard"))
    return target


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run exported to the new formats (and ONNX, to compare the sizes)."""
    out = tmp_path_factory.mktemp("exports") / "e"
    metadata = export.export_encoder(tiny_run, out, formats=["onnx", *NEW_FORMATS])
    return out, metadata


def test_new_formats_match_keras_on_real_images(tiny_run, exported):
    out, metadata = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(["encoder.onnx", *FILES.values(), "metadata.json"])
    images = data.load_shipped("test")[0][100:107]  # not the images the exporter verified with
    expected = _keras_embedding(tiny_run, images)
    runners = {"onnx_int8": _run_onnx, "litert": _run_litert, "litert_int8": _run_litert}
    for batch in (1, 7):
        for name, run in runners.items():
            got = run(out / FILES[name], images[:batch])
            assert got.dtype == np.float32 and got.shape == (batch, metadata["feature_dim"]), name
            if name == "litert":
                np.testing.assert_allclose(got, expected[:batch], atol=EXPORT_TOLERANCE)
            else:  # int8 weights: within the documented relative-error bound, and really quantized
                assert 1e-6 < _relative_error(got, expected[:batch]) <= EXPORT_INT8_TOLERANCE, name
    for name, file in FILES.items():
        assert metadata["formats"][name]["size_bytes"] == (out / file).stat().st_size


def test_metadata_lists_the_new_formats_with_their_measured_errors(exported):
    out, metadata = exported
    assert json.loads((out / "metadata.json").read_text()) == json.loads(json.dumps(metadata))
    formats = metadata["formats"]
    assert list(formats) == ["onnx", *NEW_FORMATS]
    assert [formats[name]["weights"] for name in NEW_FORMATS] == ["uint8", "float32", "int8"]
    assert formats["litert"]["signature"] == "serving_default" and formats["litert"]["input_name"] == "images"
    verification = metadata["verification"]
    for name in NEW_FORMATS:
        assert set(verification["max_abs_diff"][name]) == set(verification["relative_error"][name]) == {"batch_1", "batch_7"}
    assert verification["bounds"]["litert"] == {"measure": "max_abs_diff", "limit": EXPORT_TOLERANCE}
    assert verification["bounds"]["onnx_int8"] == verification["bounds"]["litert_int8"] == {
        "measure": "relative_error", "limit": EXPORT_INT8_TOLERANCE}
    assert max(verification["max_abs_diff"]["litert"].values()) <= EXPORT_TOLERANCE
    for name in ("onnx_int8", "litert_int8"):
        assert 0 < max(verification["relative_error"][name].values()) <= EXPORT_INT8_TOLERANCE
    assert "litert" in metadata["versions"] and "onnxruntime" in metadata["versions"]


def test_litert_takes_any_image_size(tiny_run, exported):
    """The LiteRT signature has a [-1, -1, -1, C] input: the interpreter is resized to each batch."""
    out, _ = exported
    images = data.load_shipped("test")[0][:3]
    for height, width in ((56, 56), (40, 56)):
        large = np.asarray(tf.image.resize(images, (height, width), method="nearest"), np.uint8)
        np.testing.assert_allclose(_run_litert(out / "encoder.tflite", large), _keras_embedding(tiny_run, large),
                                   atol=EXPORT_TOLERANCE)


def test_int8_check_fails_for_an_encoder_with_other_weights(tiny_run, exported, tmp_path, monkeypatch):
    """The control: the int8 bound passes the run's own int8 artefacts and fails those of another
    encoder of the same architecture, in `verify_export` and inside `export_encoder`."""
    out, _ = exported
    measured = export.verify_export(out, tiny_run, formats=["onnx_int8", "litert_int8"])
    assert max(measured["relative_error"]["litert_int8"].values()) <= EXPORT_INT8_TOLERANCE
    keras.utils.set_random_seed(99)
    impostor = amcl.encoders.small_convnet((28, 28, 1), width=4)
    export.export_encoder(impostor, tmp_path / "other", formats=["onnx_int8", "litert_int8"])
    for name in ("onnx_int8", "litert_int8"):
        with pytest.raises(export.ExportVerificationError, match=f"{name} relative_error"):
            export.verify_export(tmp_path / "other", tiny_run, formats=[name])

    def write_other_weights(build, path):
        shutil.copy(tmp_path / "other" / "encoder_int8.tflite", path)
        return {"signature": "serving_default", "input_name": "images"}

    monkeypatch.setitem(export.FORMATS, "litert_int8",
                        dataclasses.replace(export.FORMATS["litert_int8"], write=write_other_weights))
    with pytest.raises(export.ExportVerificationError, match="litert_int8 relative_error") as caught:
        export.export_encoder(tiny_run, tmp_path / "bad", formats=["litert", "litert_int8"])
    assert "Nothing was written" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_cli_exports_the_new_formats_without_leftovers(tiny_run, tmp_path, capsys):
    out = tmp_path / "e"
    assert cli.main(["export", str(tiny_run), "--out", str(out), "--formats", *NEW_FORMATS]) == 0
    printed = capsys.readouterr().out
    # the float artefacts they are made from (SavedModel, encoder.onnx) were scratch: not kept
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES.values(), "metadata.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    for name in NEW_FORMATS:
        line = next(line for line in printed.splitlines() if line.strip().startswith(f"{name} ") and "relative" in line)
        bound = "relative_error <= 0.05" if name.endswith("int8") else "max_abs_diff <= 0.0001"
        assert bound in line, line
    assert "uint8 weights" in printed and " int8 weights" in printed and "MB" in printed


def test_cli_refuses_a_bad_int8_tolerance_and_format(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", str(tiny_run), "--out", str(tmp_path / "e"), "--formats", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert cli.main(["export", str(tiny_run), "--out", str(tmp_path / "e"), "--formats", "litert_int8",
                     "--int8-tolerance", "1e-9"]) == 2
    assert "litert_int8 relative_error" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_eval_on_artefacts_matches_the_keras_eval(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path / "run")
    export.export_encoder(run, run / "export", formats=["saved_model", "onnx", "litert", "onnx_int8"])
    keras_result = evaluation.evaluate_run(run)
    keras_eval = (run / "eval.json").read_text()
    test_examples = keras_result["data"]["test_examples"]
    images = data.load_shipped("test")[0][:64]
    reference = evaluation.keras_features(keras.saving.load_model(run / "encoder.keras", compile=False), 28)(images)
    for name in ("saved_model", "onnx", "litert"):
        np.testing.assert_allclose(export.artefact_features(run, name).extract(images), reference,
                                   atol=EXPORT_TOLERANCE)
        assert cli.main(["eval", str(run), "--artefact", name]) == 0
        assert f"eval-{name}.json" in capsys.readouterr().out
        result = json.loads((run / f"eval-{name}.json").read_text())
        assert result["features"] == {"format": name, "path": str(run / "export" / export.FORMATS[name].path),
                                       "weights": "float32"}
        for protocol in ("linear_probe", "knn"):  # same features: the same predictions, up to one tie
            assert abs(result[protocol]["accuracy"] - keras_result[protocol]["accuracy"]) * test_examples <= 1.0001
    int8 = evaluation.evaluate_run(run, features=export.artefact_features(run, "onnx_int8"))
    assert int8["features"]["weights"] == "uint8" and 0 <= int8["knn"]["accuracy"] <= 1
    assert (run / "eval.json").read_text() == keras_eval  # the Keras evaluation is left as it was
    assert keras_result["features"] == {"format": "keras", "path": str(run / "encoder.keras")}


def test_eval_artefact_errors_say_what_to_do(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path / "run")
    assert cli.main(["eval", str(run), "--artefact", "litert"]) == 2
    error = capsys.readouterr().err
    assert "No export in" in error and "metadata.json is missing" in error and "amcl export RUN_DIR --formats litert" in error
    export.export_encoder(run, run / "export", formats=["onnx"])
    assert cli.main(["eval", str(run), "--artefact", "litert_int8"]) == 2
    error = capsys.readouterr().err
    assert "has the formats ['onnx'], not 'litert_int8'" in error and "--formats onnx litert_int8 --overwrite" in error
    assert cli.main(["eval", str(run), "--export-dir", str(run / "export")]) == 2
    assert "--export-dir needs --artefact FORMAT" in capsys.readouterr().err
    (run / "export" / "encoder.onnx").unlink()
    assert cli.main(["eval", str(run), "--artefact", "onnx"]) == 2
    assert "encoder.onnx' is missing from the export" in capsys.readouterr().err
    # an export of another model (different training config and feature size) is refused
    keras.utils.set_random_seed(3)
    other = amcl.encoders.small_convnet((28, 28, 1), width=2)
    export.export_encoder(other, tmp_path / "other", formats=["onnx"], config_text="another config")
    assert cli.main(["eval", str(run), "--artefact", "onnx", "--export-dir", str(tmp_path / "other")]) == 2
    assert "was made from another run" in capsys.readouterr().err
    export.export_encoder(other, tmp_path / "other", formats=["onnx"], overwrite=True)  # no config hash
    assert cli.main(["eval", str(run), "--artefact", "onnx", "--export-dir", str(tmp_path / "other")]) == 2
    assert "to 8 features; the run's encoder maps 1-channel images to 16" in capsys.readouterr().err
    assert not list(run.glob("eval*.json"))
