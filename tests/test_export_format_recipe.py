"""The recipe for an export format (docs/ARCHITECTURE.md): a writer, an opener and `export.register`, nothing else.

The toy format is the native Keras file, `encoder.keras`, run by `keras.saving.load_model` behind the same contract
as the shipped formats (uint8 images of any size in, float32 embeddings out). It is registered here, in the test, and
removed after it: the exporter writes it, verifies it against the Keras encoder with its own verification, records it
in metadata.json, and `open_artefact` runs it, with no other file changed.
"""

import dataclasses

import keras
import numpy as np
import pytest

import amcl_keras as amcl
from amcl_keras import data, export


# --- the whole format: a writer, an opener, a registration --------------------------------------------------------
def _write_keras(build, path):
    """(build, path) → the format's entry in metadata.json, besides its path, size, weights and runtime."""
    build.encoder.save(path)
    return {"input_size": [build.height, build.width]}


def _open_keras(path, info):
    """(path, its metadata entry) → run(uint8 images [B, H, W, C]) → float32 [B, feature_dim]."""
    model = keras.saving.load_model(path, compile=False)
    return lambda images: np.asarray(model(data.to_float_images(images, info["input_size"]), training=False))


@pytest.fixture
def toy():
    export.register("toy", export.Format("encoder.keras", _write_keras, _open_keras, "keras.saving.load_model"))
    try:
        yield "toy"
    finally:
        del export.FORMATS["toy"]


def _encoder():
    return amcl.encoders.small_convnet((8, 8, 1), width=4)


def test_a_registered_format_is_written_verified_and_opened(toy, tmp_path):
    encoder, out = _encoder(), tmp_path / "export"
    metadata = export.export_encoder(encoder, out, formats=["saved_model", toy])
    assert sorted(p.name for p in out.iterdir()) == ["encoder.keras", "metadata.json", "saved_model"]
    entry = metadata["formats"][toy]
    assert entry == {"path": "encoder.keras", "input_size": [8, 8], "size_bytes": (out / "encoder.keras").stat().st_size,
                     "weights": "float32", "runtime": "keras.saving.load_model"}
    # verified by the exporter itself, against the float tolerance, at each verification batch
    verification = metadata["verification"]
    assert verification["bounds"][toy] == {"measure": "max_abs_diff", "limit": verification["tolerance"]}
    assert set(verification["max_abs_diff"][toy]) == {"batch_1", "batch_7"}
    assert max(verification["max_abs_diff"][toy].values()) <= verification["tolerance"]
    # read back like any other format
    images = data.load_shipped("test")[0][100:105]  # 28x28: resized to the encoder's 8x8 inside the artefact
    expected = np.asarray(encoder(data.to_float_images(images, (8, 8)), training=False))
    np.testing.assert_allclose(export.open_artefact(out, toy)(images), expected, atol=1e-5)
    assert set(export.verify_export(out, encoder, formats=[toy])["max_abs_diff"]) == {toy}
    with pytest.raises(export.ExportError, match="registered already"):
        export.register(toy, export.FORMATS[toy])


def test_a_registered_format_that_disagrees_with_keras_is_refused(toy, tmp_path, monkeypatch):
    def write_other_weights(build, path):
        keras.models.clone_model(build.encoder).save(path)  # the architecture, freshly initialised weights
        return {"input_size": [build.height, build.width]}

    monkeypatch.setitem(export.FORMATS, toy, dataclasses.replace(export.FORMATS[toy], write=write_other_weights))
    with pytest.raises(export.ExportVerificationError, match=r"toy max_abs_diff .* > 0\.0001. Nothing was written"):
        export.export_encoder(_encoder(), tmp_path / "export", formats=[toy])
    assert list(tmp_path.iterdir()) == []


def test_the_registration_is_gone_after_the_test():
    assert "toy" not in export.FORMATS and tuple(export.FORMATS) == amcl.constants.EXPORT_FORMATS
