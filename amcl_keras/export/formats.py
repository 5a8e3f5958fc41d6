"""The format table of the export: `Format` (one artefact kind), `FORMATS` (the registered ones, in
writing order), `register`, the shared inputs of the writers (`_Build`), the names and the errors.

A format module (`saved_model.py`, `onnx.py`, `litert.py`) defines a writer and an opener and
registers its `Format`; the package imports the modules in writing order. Adding a format is one
module (or a few lines anywhere, `tests/test_export_format_recipe.py` registers a toy one) plus,
for `amcl export --formats` and the config's `export.formats`, its name in
`constants.EXPORT_FORMATS`.
"""

import dataclasses
import pathlib
import typing

import tensorflow as tf

from amcl_keras.data import to_float_images
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


FORMATS = {}  # in writing order: the quantized and LiteRT artefacts are made from the float ones


def register(name, format):
    """Add the format `name` at the end of `FORMATS` (the writing order); returns `format`.
    `export_encoder(..., formats=[..., name])` then writes and verifies it, `open_artefact` runs it.

    Example:
    ```python
    from amcl_keras import export
    saved_model = export.FORMATS["saved_model"]
    export.register("saved_model_copy", export.Format("saved_model_copy", saved_model.write, saved_model.open,
                                                      saved_model.runtime))
    ```
    """
    if name in FORMATS:
        raise ExportError(f"The export format {name!r} is registered already.")
    FORMATS[name] = format
    return format


def check_formats(formats):
    """The formats as a tuple, or ExportError naming the unknown ones and the choices."""
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"Unknown export formats {unknown or list(formats)!r}; choose from {list(FORMATS)}.")
    return formats


def _input_shape(encoder):
    shape = tuple(encoder.inputs[0].shape[1:]) if getattr(encoder, "inputs", None) else None
    if not shape or len(shape) != 3 or None in shape:
        raise ExportError(
            f"The encoder needs a fixed image input [H, W, C] to be exported, got {shape}. "
            "Build it with keras.Input((H, W, C))."
        )
    return shape


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
