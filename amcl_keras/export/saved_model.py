"""The `saved_model` format: a TensorFlow SavedModel (TF Serving, `tf.saved_model.load`) with two
signatures, `serving_default` (uint8 images, any batch, H and W) and `serving_float` (float images
in [0, 1] at the encoder's input size). The LiteRT formats are converted from it."""

import keras
import tensorflow as tf

from amcl_keras.export.formats import OUTPUT_NAME, Format, register


def _write_saved_model(build, path):
    archive = keras.export.ExportArchive()
    archive.track(build.encoder)
    archive.add_endpoint("serving_default", build.serve_uint8, input_signature=[build.uint8_spec])
    archive.add_endpoint("serving_float", build.serve_float, input_signature=[build.float_spec])
    archive.write_out(str(path), verbose=False)
    return {"signatures": ["serving_default", "serving_float"]}


def _open_saved_model(path, info, signature="serving_default"):
    loaded = tf.saved_model.load(str(path))
    function = loaded.signatures[signature]

    def run(images, _loaded=loaded):  # holds `loaded`: its variables must outlive the signature
        return function(images=tf.constant(images))[OUTPUT_NAME].numpy()

    return run


register("saved_model", Format("saved_model", _write_saved_model, _open_saved_model, "tf.saved_model.load / TF Serving"))
