"""Export the trained encoder, verified: SavedModel (TF Serving), ONNX (onnxruntime), LiteRT,
and int8-weight ONNX / LiteRT.

Only the encoder is exported (the heads and the temperature network are training machinery),
computing in float32. Every artefact takes images as a user has them — uint8, `[batch, H, W, C]`,
any batch, H and W (LiteRT too: its interpreter is resized to each input) — and bakes in the
training-time preprocessing (scale to [0, 1], resize to the encoder's input size), returning
`embedding`, `[batch, feature_dim]` float32. The SavedModel has a second signature,
`serving_float`, for float images already in [0, 1] at the input size.

Formats (`FORMATS`, one writer and one runner each, one module per family: `saved_model.py`, `onnx.py`,
`litert.py`; `formats.py` holds the table and `register`): `saved_model`, `onnx` (tf2onnx), `litert`
(tf.lite.TFLiteConverter from the SavedModel) in float32; `onnx_int8` (onnxruntime
`quantize_dynamic`, 8-bit weights stored as uint8 with a zero point) and `litert_int8`
(`tf.lite.Optimize.DEFAULT` without a representative dataset, int8 weights): dynamic-range
quantization, activations quantized on the fly at each call, uint8 input and float32 output as
the others. `amcl export` and `amcl train` write `DEFAULT_EXPORT_FORMATS` (SavedModel and
ONNX) unless told otherwise.

After writing, each artefact is reloaded (tf.saved_model.load, onnxruntime, the LiteRT
interpreter), run on real images at batch 1 and 7 and compared with the Keras encoder: a float
artefact whose maximum absolute difference exceeds `tolerance`, or an int8 artefact whose relative
error ||E - E_keras|| / ||E_keras|| exceeds `int8_tolerance`, fails, and nothing is left under the
output folder (the export is written to a temporary folder and renamed into place only when
verified). Both measures of every format are recorded in metadata.json. An output folder that
cannot be created or written (a path component that is a file, no permission, disk full) raises
`ExportWriteError`; a previous export there is left intact.
"""

import json
import os
import pathlib
import shutil
import time

import keras
import tensorflow as tf

from amcl_keras import runs
from amcl_keras.constants import DEFAULT_EXPORT_FORMATS, EXPORT_FORMATS, EXPORT_INT8_TOLERANCE, EXPORT_TOLERANCE
from amcl_keras.export.formats import (
    FORMATS, INPUT_NAME, METADATA, ONNX_OPSET, OUTPUT_NAME, VERIFY_BATCHES, ExportError, ExportReadError,
    ExportVerificationError, ExportWriteError, Format, _Build, _input_shape, check_formats, register,
)
# the format modules register their formats when imported: in writing order, the order of EXPORT_FORMATS
from amcl_keras.export import saved_model, onnx, litert  # noqa: F401  isort: skip
from amcl_keras.export.litert import litert_interpreter
from amcl_keras.export.read import artefact_features, config_hash, open_artefact, read_metadata
from amcl_keras.export.verify import _check_images, _load_source, _verify, float32_encoder, verification_images, verify_export

assert tuple(FORMATS) == EXPORT_FORMATS  # config validation and the CLI read EXPORT_FORMATS without TensorFlow

# what writing a SavedModel raises when the disk is full or a folder is not writable
_WRITE_ERRORS = (OSError, tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError, tf.errors.UnknownError)


# --- the export --------------------------------------------------------------------------------------
def export_encoder(
    source, out_dir, formats=DEFAULT_EXPORT_FORMATS, tolerance=EXPORT_TOLERANCE, images=None, opset=ONNX_OPSET,
    overwrite=False, config_text=None, int8_tolerance=EXPORT_INT8_TOLERANCE,
):
    """Export an encoder (a run directory, a trained method model, or a Keras encoder).

    Writes the artefacts of `formats` (any of `FORMATS`; default `saved_model/` and `encoder.onnx`;
    also `encoder_int8.onnx`, `encoder.tflite`, `encoder_int8.tflite`) and `out_dir/metadata.json`;
    returns the metadata. `images` (uint8 `[N >= 7, H, W, C]`) are used for the checks; by default
    the shipped Fashion-MNIST test photos. Float formats must match Keras within `tolerance` (max
    |diff|), int8 ones within `int8_tolerance` (relative error). `config_text` (the training config)
    is hashed into the metadata; a run directory supplies its own.

    Example:
    ```python
    amcl_keras.export.export_encoder("runs/simclr-20261127-120000", "runs/simclr-20261127-120000/export",
                                     formats=["onnx", "litert", "litert_int8"])
    ```
    """
    formats = check_formats(formats)
    encoder, run_config_text = _load_source(source)
    config_text = run_config_text or config_text
    images = _check_images(images, encoder)

    out_dir = pathlib.Path(out_dir)
    problem = runs.creation_problem(out_dir if out_dir.exists() and not out_dir.is_dir() else out_dir.parent)
    if problem:
        raise ExportWriteError(f"The export folder {str(out_dir)!r} cannot be created: {problem[0]}. "
                               "Choose another output folder (CLI: --out).")
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{str(out_dir)!r} already exists. Pass overwrite=True (CLI: --overwrite) to replace it.")

    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        build = _Build(encoder, staging, formats, opset)
        for name in FORMATS:
            if name in formats and name not in build.info:
                build.write(name)
        shutil.rmtree(build.scratch, ignore_errors=True)
        infos = {name: build.info[name] for name in FORMATS if name in formats}
        verification = _verify(staging, infos, encoder, images, tolerance, int8_tolerance)
        metadata = _metadata(encoder, infos, verification, config_text, images.shape[1:3])
        (staging / METADATA).write_text(json.dumps(metadata, indent=2))
        _replace_folder(staging, out_dir)
    except _WRITE_ERRORS as error:
        text = runs.describe_os_error(error) if isinstance(error, OSError) else error.message
        text = text.replace(str(staging), str(out_dir)).replace(staging.name, out_dir.name)
        kept = " A previous export there is left as it was." if out_dir.exists() else ""
        raise ExportWriteError(f"Could not write the export to {str(out_dir)!r}: {text}.{kept} Free some space or "
                               "fix the folder's permissions, or choose another output folder (CLI: --out).") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metadata


def _replace_folder(new, target):
    """Rename the folder `new` to `target`; a previous `target` is removed only once `new` is in place."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        if old.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _versions(infos):
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    if any(name.startswith("onnx") for name in infos):
        import onnx
        import onnxruntime
        import tf2onnx

        versions.update(tf2onnx=tf2onnx.__version__, onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    if any(name.startswith("litert") for name in infos):
        try:
            import ai_edge_litert

            versions["litert"] = f"ai_edge_litert {getattr(ai_edge_litert, '__version__', '?')}"
        except ImportError:
            versions["litert"] = f"tf.lite {tf.__version__}"
    return versions


def _metadata(encoder, infos, verification, config_text, verified_hw):
    height, width, channels = _input_shape(encoder)
    feature_dim = int(encoder.outputs[0].shape[-1])
    return {
        "formats": infos,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": [None, None, None, channels],
            "range": [0, 255],
            "preprocessing": f"x / 255, then bilinear resize to {height}x{width} (identity at that size)",
            "nominal_size": [height, width],
            "litert": "any batch, H and W: resize the interpreter's input to each batch's shape (the signature "
                      "runner does it)",
        },
        "input_float_signature": {"name": "serving_float", "dtype": "float32", "shape": [None, height, width, channels],
                                  "range": [0.0, 1.0]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, feature_dim]},
        "feature_dim": feature_dim,
        "verification": {
            "images": f"shipped or given uint8 images of size {list(verified_hw)}",
            "batch_sizes": list(VERIFY_BATCHES),
            **verification,
        },
        "training_config_sha256": config_hash(config_text),
        "versions": _versions(infos),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
