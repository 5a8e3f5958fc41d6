"""Export the trained encoder to SavedModel (TF Serving) and ONNX (onnxruntime), verified.

Only the encoder is exported (the heads and the temperature network are training machinery),
always in float32. Both artefacts take images as a user has them — uint8, `[batch, H, W, C]`,
any H and W — and bake in the training-time preprocessing (scale to [0, 1], resize to the
encoder's input size), returning `embedding`, `[batch, feature_dim]` float32. The SavedModel
has a second signature, `serving_float`, for float images already in [0, 1] at the input size.

After writing, both artefacts are reloaded (tf.saved_model.load, onnxruntime), run on real
images at batch 1 and 7 and compared with the Keras encoder; an export whose maximum absolute
difference exceeds the tolerance fails, and nothing is left under the output folder (the
export is written to a temporary folder and renamed into place only when verified). An output
folder that cannot be created or written (a path component that is a file, no permission, disk
full) raises `ExportWriteError`; a previous export there is left intact.
"""

import hashlib
import json
import os
import pathlib
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from amcl_keras import runs
from amcl_keras.constants import EXPORT_FORMATS, EXPORT_TOLERANCE
from amcl_keras.data import load_shipped, to_float_images

FORMATS = EXPORT_FORMATS
ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "embedding"


class ExportError(RuntimeError):
    """The export could not be made (bad source, bad options)."""


class ExportVerificationError(ExportError):
    """A reloaded artefact disagrees with the Keras encoder beyond the tolerance."""


class ExportWriteError(ExportError):
    """The output folder cannot be created or written (a path component that is a file, no
    permission, disk full); the message names the folder and the OS error. A previous export in
    that folder is left intact."""


# what writing a SavedModel raises when the disk is full or a folder is not writable
_WRITE_ERRORS = (OSError, tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError, tf.errors.UnknownError)


def _float32_policies(config):
    """Rewrite every dtype policy in a serialized model config to float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" or config.get("class_name") == "FloatDTypePolicy":
            return {**config, "config": {**config.get("config", {}), "name": "float32"}}
        return {key: _float32_policies(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_policies(value) for value in config]
    if config in ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16"):
        return "float32"
    return config


def float32_encoder(encoder):
    """The encoder itself if it computes in float32, else a float32 copy with the same weights."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in encoder._flatten_layers()):
        return encoder
    serialized = _float32_policies(keras.saving.serialize_keras_object(encoder))
    clone = keras.saving.deserialize_keras_object(serialized)
    clone.set_weights([np.asarray(w, np.float32) for w in encoder.get_weights()])
    return clone


def _input_shape(encoder):
    shape = tuple(encoder.inputs[0].shape[1:]) if getattr(encoder, "inputs", None) else None
    if not shape or len(shape) != 3 or None in shape:
        raise ExportError(
            f"The encoder needs a fixed image input [H, W, C] to be exported, got {shape}. "
            "Build it with keras.Input((H, W, C))."
        )
    return shape


def verification_images(channels, count=7):
    """Real images for the checks: the shipped Fashion-MNIST test photos, tiled to `channels`."""
    images = load_shipped("test")[0][:count]
    return np.repeat(images, channels, axis=-1) if channels != 1 else images


def _rename_onnx_output(model_proto, new_name):
    old_name = model_proto.graph.output[0].name
    for node in model_proto.graph.node:
        node.output[:] = [new_name if name == old_name else name for name in node.output]
        node.input[:] = [new_name if name == old_name else name for name in node.input]
    model_proto.graph.output[0].name = new_name
    return model_proto


def _write_saved_model(encoder, path, serve_uint8, serve_float, uint8_spec, float_spec):
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint("serving_default", serve_uint8, input_signature=[uint8_spec])
    archive.add_endpoint("serving_float", serve_float, input_signature=[float_spec])
    archive.write_out(str(path), verbose=False)


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler: TensorFlow's exact GELU (ViT, ConvNeXt) uses Erfc, which ONNX lacks: 1 − Erf(x)."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.ones((), dtype))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]],
                                  name=utils.make_name(f"{node.name}_erfc"))


def _write_onnx(serve_uint8, uint8_spec, path, opset):
    """Convert the uint8 serving function. The graph is frozen with only the signature's input as input: the
    function's other captures (variables, and constants such as a `Normalization(mean=...)` layer's, in
    EfficientNetV2 and ConvNeXt) become constants (tf2onnx's `from_function` would leave the constants as inputs)."""
    import onnx
    import tf2onnx

    concrete = serve_uint8.get_concrete_function(uint8_spec)
    input_names = [t.name for t in concrete.inputs[:len(tf.nest.flatten(concrete.structured_input_signature))]]
    output_names = [t.name for t in concrete.outputs]
    frozen = tf2onnx.tf_loader.from_function(concrete, input_names, output_names)
    model_proto, _ = tf2onnx.convert.from_graph_def(
        frozen, name=concrete.name, input_names=input_names, output_names=output_names, opset=opset,
        custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])},
        tensors_to_rename=tf2onnx.convert.tensor_names_from_structed(concrete, input_names, output_names),
    )
    model_proto = _rename_onnx_output(model_proto, OUTPUT_NAME)
    onnx.checker.check_model(model_proto)
    onnx.save(model_proto, str(path))
    return model_proto.graph.input[0].name


def _measure(run, reference, images):
    """Max |difference| between `run(batch)` and the Keras reference at batch sizes 1 and 7."""
    diffs = {}
    for batch in (1, 7):
        got = np.asarray(run(images[:batch]), np.float32)
        if got.shape != reference[:batch].shape:
            raise ExportVerificationError(f"Output shape {got.shape} != Keras {reference[:batch].shape} at batch {batch}.")
        diffs[f"batch_{batch}"] = float(np.max(np.abs(got - reference[:batch])))
    return diffs


def export_encoder(
    source, out_dir, formats=FORMATS, tolerance=EXPORT_TOLERANCE, images=None, opset=ONNX_OPSET, overwrite=False, config_text=None
):
    """Export an encoder (a run directory, a trained method model, or a Keras encoder).

    Writes `out_dir/saved_model/`, `out_dir/encoder.onnx` and `out_dir/metadata.json`;
    returns the metadata. `images` (uint8 `[N >= 7, H, W, C]`) are used for the checks;
    by default the shipped Fashion-MNIST test photos. `config_text` (the training config) is
    hashed into the metadata; a run directory supplies its own.

    Example:
    ```python
    amcl_keras.export.export_encoder("runs/simclr-20261127-120000", "runs/simclr-20261127-120000/export")
    ```
    """
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"Unknown export formats {unknown or formats!r}; choose from {FORMATS}.")
    if isinstance(source, (str, os.PathLike)):
        try:
            encoder, config_text = runs.load_run(source)
        except runs.RunReadError as error:
            raise ExportError(str(error)) from None
    else:
        encoder = getattr(source, "encoder", source)
        if not isinstance(encoder, keras.Model):
            raise ExportError(f"Cannot export {type(source).__name__}: pass a run directory, a method model or a keras.Model.")
    encoder = float32_encoder(encoder)
    height, width, channels = _input_shape(encoder)
    images = verification_images(channels) if images is None else np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != channels or len(images) < 7:
        raise ExportError(
            f"Verification images must be uint8 [N >= 7, H, W, {channels}], got {images.dtype} {images.shape}."
        )

    out_dir = pathlib.Path(out_dir)
    problem = runs.creation_problem(out_dir if out_dir.exists() and not out_dir.is_dir() else out_dir.parent)
    if problem:
        raise ExportWriteError(f"The export folder {str(out_dir)!r} cannot be created: {problem[0]}. "
                               "Choose another output folder (CLI: --out).")
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{str(out_dir)!r} already exists. Pass overwrite=True (CLI: --overwrite) to replace it.")

    uint8_spec = tf.TensorSpec([None, None, None, channels], tf.uint8, name=INPUT_NAME)
    float_spec = tf.TensorSpec([None, height, width, channels], tf.float32, name=INPUT_NAME)

    @tf.function
    def serve_uint8(images):
        return {OUTPUT_NAME: encoder(to_float_images(images, height), training=False)}

    @tf.function
    def serve_float(images):
        return {OUTPUT_NAME: encoder(images, training=False)}

    reference = np.asarray(encoder(to_float_images(images[:7], height), training=False), np.float32)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        checks = {}
        if "saved_model" in formats:
            _write_saved_model(encoder, staging / "saved_model", serve_uint8, serve_float, uint8_spec, float_spec)
            loaded = tf.saved_model.load(str(staging / "saved_model"))  # keep a reference while in use
            signature = loaded.signatures["serving_default"]
            checks["saved_model"] = _measure(lambda x: signature(images=tf.constant(x))[OUTPUT_NAME], reference, images)
            floats = loaded.signatures["serving_float"]
            checks["saved_model_float"] = _measure(
                lambda x: floats(images=to_float_images(x, height))[OUTPUT_NAME], reference, images
            )
        onnx_input = None
        if "onnx" in formats:
            import onnxruntime

            onnx_input = _write_onnx(serve_uint8, uint8_spec, staging / "encoder.onnx", opset)
            session = onnxruntime.InferenceSession(str(staging / "encoder.onnx"), providers=["CPUExecutionProvider"])
            checks["onnx"] = _measure(lambda x: session.run([OUTPUT_NAME], {onnx_input: x})[0], reference, images)
        worst = {name: max(d.values()) for name, d in checks.items()}
        failed = {name: value for name, value in worst.items() if not value <= tolerance}
        if failed:
            raise ExportVerificationError(
                f"Exported encoder disagrees with Keras beyond {tolerance}: max |diff| {failed}. Nothing was written."
            )
        metadata = _metadata(encoder, formats, checks, tolerance, opset, onnx_input, config_text, images.shape[1:3])
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2))
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


def _metadata(encoder, formats, checks, tolerance, opset, onnx_input, config_text, verified_hw):
    import onnx
    import onnxruntime
    import tf2onnx

    height, width, channels = _input_shape(encoder)
    return {
        "formats": {
            **({"saved_model": {"path": "saved_model", "signatures": ["serving_default", "serving_float"]}}
               if "saved_model" in formats else {}),
            **({"onnx": {"path": "encoder.onnx", "opset": opset, "input_name": onnx_input, "converter": "tf2onnx"}}
               if "onnx" in formats else {}),
        },
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": [None, None, None, channels],
            "range": [0, 255],
            "preprocessing": f"x / 255, then bilinear resize to {height}x{width} (identity at that size)",
            "nominal_size": [height, width],
        },
        "input_float_signature": {"name": "serving_float", "dtype": "float32", "shape": [None, height, width, channels],
                                  "range": [0.0, 1.0]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, int(encoder.outputs[0].shape[-1])]},
        "feature_dim": int(encoder.outputs[0].shape[-1]),
        "verification": {
            "images": f"shipped or given uint8 images of size {list(verified_hw)}",
            "batch_sizes": [1, 7],
            "tolerance": tolerance,
            "max_abs_diff": checks,
        },
        "training_config_sha256": hashlib.sha256(config_text.encode()).hexdigest() if config_text else None,
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
