"""The `litert` format (tf.lite.TFLiteConverter from the SavedModel, run by the LiteRT interpreter)
and `litert_int8` (`tf.lite.Optimize.DEFAULT` without a representative dataset: int8 weights,
activations quantized per call by the hybrid kernels). The interpreter is resized to each input:
any batch, H and W."""

import os
import warnings

import numpy as np
import tensorflow as tf

from amcl_keras.export.formats import INPUT_NAME, OUTPUT_NAME, Format, register


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


register("litert", Format("encoder.tflite", _write_litert, _open_litert, "LiteRT interpreter"))
register("litert_int8", Format("encoder_int8.tflite", lambda build, path: _write_litert(build, path, quantize=True),
                               _open_litert, "LiteRT interpreter", weights="int8"))
