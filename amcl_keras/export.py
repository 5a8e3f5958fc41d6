"""Export the trained encoder, verified: SavedModel (TF Serving), ONNX (onnxruntime), LiteRT,
and int8-weight ONNX / LiteRT.

Only the encoder is exported (the heads and the temperature network are training machinery),
computing in float32. Every artefact takes images as a user has them — uint8, `[batch, H, W, C]`,
any batch, H and W (LiteRT too: its interpreter is resized to each input) — and bakes in the
training-time preprocessing (scale to [0, 1], resize to the encoder's input size), returning
`embedding`, `[batch, feature_dim]` float32. The SavedModel has a second signature,
`serving_float`, for float images already in [0, 1] at the input size.

Formats (`FORMATS`, one writer and one runner each): `saved_model`, `onnx` (tf2onnx), `litert`
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

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import time
import typing
import warnings

import keras
import numpy as np
import tensorflow as tf

from amcl_keras import evaluation, runs
from amcl_keras.constants import DEFAULT_EXPORT_FORMATS, EXPORT_FORMATS, EXPORT_INT8_TOLERANCE, EXPORT_TOLERANCE
from amcl_keras.data import load_shipped, to_float_images
from amcl_keras.errors import AMCLError

ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "embedding"
METADATA = "metadata.json"
VERIFY_BATCHES = (1, 7)


class ExportError(AMCLError, RuntimeError):
    """The export could not be made (bad source, bad options)."""


class ExportVerificationError(ExportError):
    """A reloaded artefact disagrees with the Keras encoder beyond the tolerance."""


class ExportWriteError(ExportError):
    """The output folder cannot be created or written (a path component that is a file, no
    permission, disk full); the message names the folder and the OS error. A previous export in
    that folder is left intact."""


class ExportReadError(ExportError):
    """An export folder, or the artefact of a format in it, is missing or cannot be read."""


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


# --- the shared inputs of the writers ----------------------------------------------------------------
class _Build:
    """What the writers share: the float32 encoder, its serving functions, and the float artefacts
    the quantized and LiteRT ones are made from (written once: into the export when that format is
    asked for, else into a scratch folder removed before the export is kept)."""

    def __init__(self, encoder, folder, formats, opset):
        self.encoder, self.folder, self.formats, self.opset = encoder, folder, formats, opset
        self.height, self.width, self.channels = _input_shape(encoder)
        self.uint8_spec = tf.TensorSpec([None, None, None, self.channels], tf.uint8, name=INPUT_NAME)
        self.float_spec = tf.TensorSpec([None, self.height, self.width, self.channels], tf.float32, name=INPUT_NAME)
        self.scratch = folder / ".intermediate"
        self.info = {}  # format name → its metadata entry, once written

        @tf.function
        def serve_uint8(images):
            return {OUTPUT_NAME: encoder(to_float_images(images, (self.height, self.width)), training=False)}

        @tf.function
        def serve_float(images):
            return {OUTPUT_NAME: encoder(images, training=False)}

        self.serve_uint8, self.serve_float = serve_uint8, serve_float

    def write(self, name):
        """Write the format `name` into the export folder; returns its metadata entry."""
        path = self.folder / FORMATS[name].path
        self.info[name] = {"path": FORMATS[name].path, **FORMATS[name].write(self, path), "size_bytes": _size(path),
                           "weights": FORMATS[name].weights, "runtime": FORMATS[name].runtime}
        return self.info[name]

    def source(self, name):
        """The path of the float artefact `name` (written already, or now into the scratch folder)."""
        if name in self.formats:
            if name not in self.info:
                self.write(name)
            return self.folder / FORMATS[name].path
        path = self.scratch / FORMATS[name].path
        if not path.exists():
            self.scratch.mkdir(exist_ok=True)
            FORMATS[name].write(self, path)
        return path


def _size(path):
    path = pathlib.Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def _quiet_logging():
    """onnxruntime.quantization logs a root-logger warning on every call (a hint about its shape
    pre-processing, which dynamic quantization does not need)."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(previous)


# --- writers: (build, path) → the format's entry in metadata.json (besides path, size, weights) ------
def _write_saved_model(build, path):
    archive = keras.export.ExportArchive()
    archive.track(build.encoder)
    archive.add_endpoint("serving_default", build.serve_uint8, input_signature=[build.uint8_spec])
    archive.add_endpoint("serving_float", build.serve_float, input_signature=[build.float_spec])
    archive.write_out(str(path), verbose=False)
    return {"signatures": ["serving_default", "serving_float"]}


def _rename_onnx_output(model_proto, new_name):
    old_name = model_proto.graph.output[0].name
    for node in model_proto.graph.node:
        node.output[:] = [new_name if name == old_name else name for name in node.output]
        node.input[:] = [new_name if name == old_name else name for name in node.input]
    model_proto.graph.output[0].name = new_name
    return model_proto


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler: TensorFlow's exact GELU (ViT, ConvNeXt) uses Erfc, which ONNX lacks: 1 − Erf(x)."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.ones((), dtype))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]],
                                  name=utils.make_name(f"{node.name}_erfc"))


def _write_onnx(build, path):
    """Convert the uint8 serving function. The graph is frozen with only the signature's input as input: the
    function's other captures (variables, and constants such as a `Normalization(mean=...)` layer's, in
    EfficientNetV2 and ConvNeXt) become constants (tf2onnx's `from_function` would leave the constants as inputs)."""
    import onnx
    import tf2onnx

    concrete = build.serve_uint8.get_concrete_function(build.uint8_spec)
    input_names = [t.name for t in concrete.inputs[:len(tf.nest.flatten(concrete.structured_input_signature))]]
    output_names = [t.name for t in concrete.outputs]
    from tensorflow.python.util import deprecation  # tf2onnx calls TF1 APIs: 8 deprecation warnings per export

    with deprecation.silence():
        frozen = tf2onnx.tf_loader.from_function(concrete, input_names, output_names)
        model_proto, _ = tf2onnx.convert.from_graph_def(
            frozen, name=concrete.name, input_names=input_names, output_names=output_names, opset=build.opset,
            custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])},
            tensors_to_rename=tf2onnx.convert.tensor_names_from_structed(concrete, input_names, output_names),
        )
    model_proto = _rename_onnx_output(model_proto, OUTPUT_NAME)
    onnx.checker.check_model(model_proto)
    onnx.save(model_proto, str(path))
    return {"opset": build.opset, "input_name": model_proto.graph.input[0].name, "converter": "tf2onnx"}


def _write_onnx_int8(build, path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_logging():
        # uint8 weights (with a zero point): onnxruntime's u8u8 ConvInteger kernels, 4-6x faster than its int8-weight
        # (u8s8) path on small_convnet and ResNet-18 (onnxruntime 1.32), as accurate, and free of the u8s8
        # saturation of AVX2 / non-VNNI CPUs (no reduce_range needed)
        quantize_dynamic(str(build.source("onnx")), str(path), weight_type=QuantType.QUInt8)
    model_proto = onnx.load(str(path))
    return {"opset": build.opset, "input_name": model_proto.graph.input[0].name,
            "converter": "tf2onnx, then onnxruntime.quantization.quantize_dynamic (QUInt8 weights, per tensor; "
                         "activations quantized to uint8 at each call)"}


def _write_litert(build, path, quantize=False):
    # From the SavedModel: converting the tf.function directly (from_concrete_functions) leaves the
    # Keras 3 variables as uninitialised resource variables in TF 2.21 (garbage outputs).
    converter = tf.lite.TFLiteConverter.from_saved_model(str(build.source("saved_model")),
                                                         signature_keys=["serving_default"])
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative dataset: dynamic range
    path.write_bytes(converter.convert())
    return {"signature": "serving_default", "input_name": INPUT_NAME,
            "converter": "tf.lite.TFLiteConverter.from_saved_model"
                         + (", optimizations=[Optimize.DEFAULT], no representative dataset (int8 weights; "
                            "activations quantized per call by the hybrid kernels)" if quantize else "")}


# --- runners: (path, info) → run(uint8 images [B, H, W, C]) → float32 [B, feature_dim] ---------------
def _open_saved_model(path, info, signature="serving_default"):
    loaded = tf.saved_model.load(str(path))
    function = loaded.signatures[signature]

    def run(images, _loaded=loaded):  # holds `loaded`: its variables must outlive the signature
        return function(images=tf.constant(images))[OUTPUT_NAME].numpy()

    return run


def _open_onnx(path, info):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = info["input_name"]
    return lambda images: session.run([OUTPUT_NAME], {input_name: np.asarray(images, np.uint8)})[0]


def litert_interpreter(path, num_threads=None):
    """A LiteRT interpreter for `path`: `ai_edge_litert`'s when installed, else the `tf.lite` one that
    ships with TensorFlow (deprecated in favour of ai_edge_litert, still present and working in TF 2.21)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        return Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count())


def _open_litert(path, info):
    runner = litert_interpreter(path).get_signature_runner(info["signature"])
    # the signature runner resizes the input (any batch, H, W) and reallocates only when the shape changes
    return lambda images: runner(**{info["input_name"]: np.ascontiguousarray(images, np.uint8)})[OUTPUT_NAME].copy()


@dataclasses.dataclass(frozen=True)
class Format:
    """One artefact kind: where it lives in the export folder, how it is written and how it is run."""

    path: str  # file or folder inside the export folder
    write: typing.Callable  # (build, path) → its metadata entry
    open: typing.Callable  # (path, metadata entry) → run(uint8 images) → float32 embeddings
    runtime: str  # what runs it
    weights: str = "float32"  # 8-bit ("int8", "uint8"): verified against the relative-error bound, not the tolerance

    @property
    def quantized(self):
        return self.weights != "float32"


FORMATS = {  # in writing order: the quantized and LiteRT artefacts are made from the float ones
    "saved_model": Format("saved_model", _write_saved_model, _open_saved_model, "tf.saved_model.load / TF Serving"),
    "onnx": Format("encoder.onnx", _write_onnx, _open_onnx, "onnxruntime"),
    "onnx_int8": Format("encoder_int8.onnx", _write_onnx_int8, _open_onnx, "onnxruntime", weights="uint8"),
    "litert": Format("encoder.tflite", _write_litert, _open_litert, "LiteRT interpreter"),
    "litert_int8": Format("encoder_int8.tflite", lambda build, path: _write_litert(build, path, quantize=True),
                          _open_litert, "LiteRT interpreter", weights="int8"),
}
assert tuple(FORMATS) == EXPORT_FORMATS


def check_formats(formats):
    """The formats as a tuple, or ExportError naming the unknown ones and the choices."""
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"Unknown export formats {unknown or list(formats)!r}; choose from {list(FORMATS)}.")
    return formats


# --- verification ------------------------------------------------------------------------------------
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


def read_metadata(export_dir, format=None):
    """`metadata.json` of an export folder; with `format`, also checks that its artefact is there."""
    export_dir = pathlib.Path(export_dir)
    path = export_dir / METADATA
    if not path.is_file():
        raise ExportReadError(
            f"No export in {str(export_dir)!r} ({METADATA} is missing). Write one with `amcl export RUN_DIR "
            f"--formats {format or ' '.join(DEFAULT_EXPORT_FORMATS)}` (or --out to choose the folder)."
        )
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
        formats = metadata["formats"]
    except (ValueError, KeyError, TypeError) as error:
        raise ExportReadError(f"{str(path)!r} is corrupt ({type(error).__name__}: {error}). Export again with "
                              "`amcl export RUN_DIR --overwrite`.") from None
    for name in [format] if format is not None else []:
        _check_artefact(export_dir, formats, name)
    return metadata


def _check_artefact(export_dir, formats, name):
    if name not in FORMATS:
        raise ExportReadError(f"Unknown export format {name!r}; choose from {list(FORMATS)}.")
    if name not in formats:
        raise ExportReadError(
            f"The export in {str(export_dir)!r} has the formats {list(formats)}, not {name!r}. Export it with "
            f"`amcl export RUN_DIR --out NEW_FOLDER --formats {name}` (or add it: `--formats "
            f"{' '.join([*formats, name])} --overwrite`)."
        )
    if not (export_dir / formats[name]["path"]).exists():
        raise ExportReadError(f"{str(export_dir / formats[name]['path'])!r} is missing from the export in "
                              f"{str(export_dir)!r}. Export again with `amcl export RUN_DIR --overwrite`.")


def open_artefact(export_dir, format, metadata=None):
    """`run(images)`: embeddings (float32 `[batch, feature_dim]`) of uint8 images `[batch, H, W, C]`
    computed by the exported artefact `format` of `export_dir` (TF SavedModel, onnxruntime session,
    LiteRT interpreter)."""
    metadata = metadata or read_metadata(export_dir, format)
    info = metadata["formats"][format]
    path = pathlib.Path(export_dir) / info["path"]
    try:
        return FORMATS[format].open(path, info)
    except Exception as error:  # onnxruntime, TF and LiteRT raise their own types for a damaged file
        raise ExportReadError(
            f"The {format} artefact {str(path)!r} cannot be opened ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0][:300] if str(error).strip() else 'no message'}): it is truncated, "
            f"damaged or not a {format} file. Export it again: `amcl export RUN_DIR --formats {format} --overwrite`."
        ) from error


def artefact_features(run_dir, format, export_dir=None, batch_size=512):
    """An `evaluation.FeatureSource` computing a run's features with its exported artefact `format`
    (from `export_dir`, default `RUN_DIR/export`), for `evaluation.evaluate_run(run_dir, features=...)`.
    Refuses, with what to do, a missing export or format and another model's export."""
    run_dir = pathlib.Path(run_dir)
    encoder, config_text = runs.load_run(run_dir)
    export_dir = pathlib.Path(export_dir) if export_dir is not None else run_dir / runs.EXPORT
    metadata = read_metadata(export_dir, format)
    made_from = metadata.get("training_config_sha256")
    if made_from and made_from != config_hash(config_text):
        raise ExportReadError(
            f"The export in {str(export_dir)!r} was made from another run (its training config differs from "
            f"{str(run_dir / runs.CONFIG)!r}). Pass the export of this run (--export-dir), or export it: "
            f"`amcl export {run_dir} --formats {format}`."
        )
    expected = (int(encoder.outputs[0].shape[-1]), int(encoder.inputs[0].shape[-1]))
    if (metadata["feature_dim"], metadata["input"]["shape"][-1]) != expected:
        raise ExportReadError(
            f"The export in {str(export_dir)!r} maps {metadata['input']['shape'][-1]}-channel images to "
            f"{metadata['feature_dim']} features; the run's encoder maps {expected[1]}-channel images to {expected[0]}. "
            f"It is another model's export: pass this run's (--export-dir) or `amcl export {run_dir} --formats {format}`."
        )
    info = metadata["formats"][format]
    return evaluation.FeatureSource(
        evaluation.batched_features(open_artefact(export_dir, format, metadata), batch_size), format,
        {"format": format, "path": str(export_dir / info["path"]), "weights": info["weights"]},
    )


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


# --- the export --------------------------------------------------------------------------------------
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


def config_hash(config_text):
    return hashlib.sha256(config_text.encode()).hexdigest() if config_text else None
