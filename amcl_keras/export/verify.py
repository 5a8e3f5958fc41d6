"""Verification: every artefact is reloaded by its own runtime, run on real images at each of
`VERIFY_BATCHES` and compared with the float32 Keras encoder (max |difference| for a float format,
relative error for an 8-bit one); also the encoder and the images the checks use."""

import os
import pathlib

import keras
import numpy as np

from amcl_keras import runs
from amcl_keras.constants import EXPORT_INT8_TOLERANCE, EXPORT_TOLERANCE
from amcl_keras.data import load_shipped, to_float_images
from amcl_keras.export.formats import FORMATS, VERIFY_BATCHES, ExportError, ExportVerificationError, _input_shape
from amcl_keras.export.read import _check_artefact, read_metadata
from amcl_keras.export.saved_model import _open_saved_model


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


def verification_images(channels, count=7):
    """Real images for the checks: the shipped Fashion-MNIST test photos, tiled to `channels`."""
    images = load_shipped("test")[0][:count]
    return np.repeat(images, channels, axis=-1) if channels != 1 else images


def _load_source(source):
    if isinstance(source, (str, os.PathLike)):
        try:
            encoder, config_text = runs.load_run(source)
        except runs.RunReadError as error:
            raise ExportError(str(error)) from None
    else:
        encoder, config_text = getattr(source, "encoder", source), None
        if not isinstance(encoder, keras.Model):
            raise ExportError(f"Cannot export {type(source).__name__}: pass a run directory, a method model or a keras.Model.")
    return float32_encoder(encoder), config_text


def _check_images(images, encoder):
    channels = _input_shape(encoder)[2]
    images = verification_images(channels) if images is None else np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != channels or len(images) < max(VERIFY_BATCHES):
        raise ExportError(
            f"Verification images must be uint8 [N >= {max(VERIFY_BATCHES)}, H, W, {channels}], got {images.dtype} "
            f"{images.shape}."
        )
    return images


def _measure(run, reference, images):
    """Max |difference| and relative error ||E - E_keras|| / ||E_keras|| of `run` against the Keras
    reference, at each verification batch size."""
    max_abs, relative = {}, {}
    for batch in VERIFY_BATCHES:
        got = np.asarray(run(images[:batch]), np.float32)
        expected = reference[:batch]
        if got.shape != expected.shape:
            raise ExportVerificationError(f"Output shape {got.shape} != Keras {expected.shape} at batch {batch}.")
        error = got - expected
        max_abs[f"batch_{batch}"] = float(np.max(np.abs(error)))
        relative[f"batch_{batch}"] = float(np.linalg.norm(error) / max(np.linalg.norm(expected), 1e-12))
    return max_abs, relative


def _verify(folder, infos, encoder, images, tolerance, int8_tolerance):
    """Reload each artefact of `infos` (format → metadata entry) from `folder`, compare it with the
    float32 Keras `encoder` on `images`; returns the measurements, raises ExportVerificationError."""
    size = _input_shape(encoder)[:2]  # (height, width): the uint8 signatures resize to it
    reference = np.asarray(encoder(to_float_images(images[: max(VERIFY_BATCHES)], size), training=False), np.float32)
    runs_ = {}
    for name, info in infos.items():
        runs_[name] = FORMATS[name].open(folder / info["path"], info)
        if name == "saved_model":  # its second signature, fed the library's own preprocessing
            floats = _open_saved_model(folder / info["path"], info, "serving_float")
            runs_["saved_model_float"] = lambda x, floats=floats: floats(to_float_images(x, size).numpy())
    measured = {name: _measure(run, reference, images) for name, run in runs_.items()}
    bounds = {name: ("relative_error", int8_tolerance) if name in FORMATS and FORMATS[name].quantized
              else ("max_abs_diff", tolerance) for name in runs_}
    verification = {
        "max_abs_diff": {name: m[0] for name, m in measured.items()},
        "relative_error": {name: m[1] for name, m in measured.items()},
        "bounds": {name: {"measure": measure, "limit": limit} for name, (measure, limit) in bounds.items()},
        "tolerance": tolerance,
        "int8_tolerance": int8_tolerance,
    }
    failed = {name: max(verification[measure][name].values()) for name, (measure, limit) in bounds.items()
              if not max(verification[measure][name].values()) <= limit}
    if failed:
        raise ExportVerificationError(
            "Exported encoder disagrees with Keras: " + "; ".join(
                f"{name} {bounds[name][0]} {value:.3g} > {bounds[name][1]:g}" for name, value in failed.items())
            + ". Nothing was written. A float format must match within the tolerance (CLI: --tolerance); an int8 "
            "one within the relative-error bound (--int8-tolerance); a far larger error means a broken conversion."
        )
    return verification


def verify_export(export_dir, source, images=None, formats=None, tolerance=EXPORT_TOLERANCE,
                  int8_tolerance=EXPORT_INT8_TOLERANCE):
    """Re-verify an existing export against an encoder (a run directory, a method model or a Keras
    model): its artefacts (`formats`, default all) are reloaded and compared on real images with the
    bounds of `export_encoder`. Returns the measurements; raises ExportVerificationError."""
    export_dir = pathlib.Path(export_dir)
    metadata = read_metadata(export_dir)
    for name in formats or ():
        _check_artefact(export_dir, metadata["formats"], name)
    infos = {name: metadata["formats"][name] for name in formats or metadata["formats"]}
    encoder, _ = _load_source(source)
    return _verify(export_dir, infos, encoder, _check_images(images, encoder), tolerance, int8_tolerance)
