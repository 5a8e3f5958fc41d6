"""Backbones by name from other libraries, as amcl-keras encoders: images `[batch, H, W, C]`, floats in
[0, 1] → features `[batch, F]`.

- `keras.applications.<Name>` (e.g. `keras.applications.ResNet50`, `keras.applications.MobileNetV3Small`):
  `keras.applications.<Name>(include_top=False, weights=..., input_shape=..., pooling="avg")` behind a
  serializable `ApplicationPreprocessing` layer that maps [0, 1] images to what that application expects.
  Weights are random, or a local file (`model.encoder_weights`); nothing is ever downloaded.
- `keras_hub.ViTBackbone`: a Vision Transformer built from a configuration (`model.encoder_options`), random
  init, its output pooled to `[batch, hidden_dim]` (the class token, or the mean of the patch tokens).

Each family registers itself (`registry.register_encoder_family`) with a builder and a `check` that the config
validation calls, so a wrong name, option or weights value is refused when the config is loaded.
"""

import importlib.util
import inspect
import os

import keras

from amcl_keras.normalization import SyncBatchNormalization
from amcl_keras.registry import register_encoder_family
from amcl_keras.errors import InvalidInputError

APPLICATIONS_PREFIX = "keras.applications."
KERAS_HUB_PREFIX = "keras_hub."

# What each keras.applications module's `preprocess_input` expects, for images x in [0, 255] RGB:
#   "caffe": RGB → BGR, minus the ImageNet mean per channel (no scaling)
#   "tf":    x / 127.5 − 1
#   "torch": (x / 255 − ImageNet mean) / ImageNet std
#   "model": x itself; the model holds its own Rescaling / Normalization layers (include_preprocessing)
APPLICATION_PREPROCESSING = {
    "resnet": "caffe", "vgg16": "caffe", "vgg19": "caffe",
    "resnet_v2": "tf", "inception_v3": "tf", "inception_resnet_v2": "tf", "xception": "tf", "mobilenet": "tf",
    "mobilenet_v2": "tf", "nasnet": "tf",
    "densenet": "torch",
    "efficientnet": "model", "efficientnet_v2": "model", "mobilenet_v3": "model", "convnext": "model",
}
PREPROCESSING_MODES = ("caffe", "tf", "torch", "model")
# keras.applications modules whose models tf2onnx cannot convert (the SavedModel export works for them)
ONNX_PROBLEMS = {
    "convnext": "Keras runs its grouped (depthwise) convolutions as XLA-compiled calls, which tf2onnx cannot convert",
}
_IMAGENET_MEAN_BGR_255 = (103.939, 116.779, 123.68)
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# set by amcl_keras itself; an application's other keyword arguments may come from model.encoder_options
_APPLICATION_FIXED = ("include_top", "weights", "input_tensor", "input_shape", "pooling", "classes",
                      "classifier_activation", "include_preprocessing", "name")


@keras.saving.register_keras_serializable(package="amcl_keras")
class ApplicationPreprocessing(keras.layers.Layer):
    """Maps images in [0, 1] to the input convention of a keras.applications model (`mode`, see
    `APPLICATION_PREPROCESSING`): grayscale is repeated to 3 channels, then ×255 and the application's
    `preprocess_input` (the "caffe", "tf" or "torch" convention; "model": ×255 only, the model rescales).
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise InvalidInputError(f"`mode` must be one of {PREPROCESSING_MODES}, got {mode!r}.")
        self.mode = mode

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype)
        if x.shape[-1] == 1:
            x = keras.ops.concatenate([x, x, x], axis=-1)
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_IMAGENET_MEAN_RGB, self.compute_dtype)
            std = keras.ops.convert_to_tensor(_IMAGENET_STD_RGB, self.compute_dtype)
            return (x - mean) / std
        x = x * 255.0
        if self.mode == "caffe":
            bgr = keras.ops.stack([x[..., 2], x[..., 1], x[..., 0]], axis=-1)
            return bgr - keras.ops.convert_to_tensor(_IMAGENET_MEAN_BGR_255, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def application_names():
    """The model builders `keras.applications` exports (e.g. "ResNet50", "MobileNetV3Small")."""
    return sorted(name for name in dir(keras.applications) if name[:1].isupper())


def _application_module(name):
    return getattr(keras.applications, name).__module__.rsplit(".", 1)[-1]


def application_preprocessing(name):
    """The preprocessing mode of application `name` (from its module: `keras.applications.resnet` → "caffe")."""
    module = _application_module(name)
    if module not in APPLICATION_PREPROCESSING:
        raise InvalidInputError(f"keras.applications.{name} (module {module!r}) has no known input preprocessing; "
                         f"amcl_keras.backbones.APPLICATION_PREPROCESSING covers {sorted(APPLICATION_PREPROCESSING)}.")
    return APPLICATION_PREPROCESSING[module]


def _check_weights_file(key, weights, suffixes):
    if weights is None:
        return
    if not isinstance(weights, str):
        raise InvalidInputError(f"{key} must be a path to a local weights file, got {weights!r}.")
    if weights.lower() == "imagenet":
        raise InvalidInputError(
            f"{key}='imagenet' would download the ImageNet weights at run time, and amcl-keras never downloads. "
            "Download the file yourself where there is network access (e.g. `keras.applications.ResNet50("
            "include_top=False, weights='imagenet').save_weights('resnet50_notop.weights.h5')`, or Keras's "
            "'..._notop.h5' file), copy it here and set model.encoder_weights to its path."
        )
    if not weights.endswith(suffixes):
        raise InvalidInputError(f"{key}={weights!r}: expected a Keras weights file ending in {' or '.join(suffixes)}.")


def require_weights_file(weights):
    if weights is not None and not os.path.isfile(weights):
        raise InvalidInputError(f"model.encoder_weights={weights!r}: no such file. Give the path of a local weights file.")


def load_weights_file(load, weights, what):
    """Run `load()` (a Keras call that reads the weights file `weights` into `what`), turning whatever h5py or
    Keras raises for a file that is not a Keras weights file, is truncated, or belongs to another model into one
    `InvalidInputError` that says so (h5py alone says "Unable to synchronously open file (file signature not
    found)")."""
    try:
        return load()
    except InvalidInputError:
        raise
    except Exception as error:  # h5py's OSError, Keras's ValueError on a shape mismatch, ...
        raise InvalidInputError(
            f"model.encoder_weights={weights!r} could not be loaded into {what}: {type(error).__name__}: {error}. "
            "Expected a Keras weights file (HDF5) saved from the same architecture and input shape, e.g. with "
            "`encoder.save_weights('encoder.weights.h5')`; check that the file is complete (not truncated) and "
            "is not another model's."
        ) from error


def check_application(model_name, weights=None, options=None):
    """Raise ValueError (naming the key and what is allowed) unless `keras.applications.<model_name>` with
    `weights` and `options` (extra keyword arguments of the application) can be built."""
    names = application_names()
    if model_name not in names:
        examples = ", ".join(APPLICATIONS_PREFIX + n for n in ("ResNet50", "MobileNetV3Small", "EfficientNetV2B0"))
        raise InvalidInputError(f"model.encoder='{APPLICATIONS_PREFIX}{model_name}' is not a keras.applications model. "
                         f"Valid names include {examples} ({len(names)} in all: {', '.join(names)}).")
    application_preprocessing(model_name)
    _check_weights_file("model.encoder_weights", weights, (".h5",))
    allowed = [p for p in inspect.signature(getattr(keras.applications, model_name)).parameters
               if p not in _APPLICATION_FIXED]
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise InvalidInputError(f"model.encoder_options {unknown} are not arguments of keras.applications.{model_name} "
                         f"that amcl-keras leaves open; those are {allowed}.")


def _swap_batch_norm(model):
    """A copy of `model` whose BatchNormalization layers are `SyncBatchNormalization(synchronized=True)`
    (global-batch statistics over all replicas, two-pass), with the same weights."""

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return SyncBatchNormalization.from_config({**layer.get_config(), "synchronized": True})
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def application_onnx_problem(model_name):
    """Why `keras.applications.<model_name>` cannot be exported to ONNX, or None (checked per family by
    tests/test_backbones.py and the survey in README "Encoders")."""
    return ONNX_PROBLEMS.get(_application_module(model_name))


@register_encoder_family(APPLICATIONS_PREFIX, check=check_application, example="keras.applications.ResNet50",
                         weights=True, onnx_problem=application_onnx_problem)
def keras_application(model_name, input_shape, synchronized_batch_norm=False, weights=None, options=None,
                      name=None):
    """`keras.applications.<model_name>` as an encoder: [0, 1] images → `ApplicationPreprocessing` → the
    application (no top, global average pooling) → `[batch, F]`.

    `weights`: None (random) or a local `.h5` / `.weights.h5` file for the no-top model (never "imagenet":
    nothing downloads). With `synchronized_batch_norm` its BatchNormalization layers become
    `SyncBatchNormalization(synchronized=True)`. Grayscale inputs are repeated to 3 channels.

    Example:
    ```python
    encoder = amcl_keras.backbones.keras_application("MobileNetV3Small", (32, 32, 3))   # → [batch, 576]
    ```
    """
    check_application(model_name, weights, options)
    require_weights_file(weights)
    height, width, channels = tuple(input_shape)
    builder = getattr(keras.applications, model_name)
    kwargs = dict(options or {})
    if "include_preprocessing" in inspect.signature(builder).parameters:
        kwargs["include_preprocessing"] = True
    try:
        application = builder(include_top=False, weights=None, input_shape=(height, width, 3), pooling="avg", **kwargs)
    except ValueError as error:  # Keras checks the input size and the options when it builds the model
        raise InvalidInputError(
            f"keras.applications.{model_name} cannot be built for images of {height}x{width}"
            f"{' with model.encoder_options=' + repr(options) if options else ''}: {error}. Set data.image_size to a "
            "size this model accepts (most need at least 32; their docs list the minimum), or choose another "
            "model.encoder_options."
        ) from error
    if weights is not None:  # what the builder does with a weights path, with an error that names the file
        load_weights_file(lambda: application.load_weights(weights), weights, f"keras.applications.{model_name}")
    if synchronized_batch_norm:
        application = _swap_batch_norm(application)
    inputs = keras.Input((height, width, channels), name="images")
    x = ApplicationPreprocessing(application_preprocessing(model_name), name="preprocessing")(inputs)
    outputs = application(x)
    return keras.Model(inputs, outputs, name=name or f"{model_name.lower()}_encoder")


VIT_POOLINGS = ("cls", "mean")
# model.encoder_options of keras_hub.ViTBackbone and their defaults: ViT-Tiny (Steiner et al.) with 4×4 patches
VIT_OPTIONS = {"patch_size": 4, "hidden_dim": 192, "num_layers": 12, "num_heads": 3, "mlp_dim": 768,
               "dropout_rate": 0.0, "attention_dropout": 0.0, "layer_norm_epsilon": 1e-6, "pooling": "cls"}
KERAS_HUB_MODELS = ("ViTBackbone",)
KERAS_HUB_INSTALL = "pip install --no-deps -r requirements-keras-hub.txt"


@keras.saving.register_keras_serializable(package="amcl_keras")
class TokenPooling(keras.layers.Layer):
    """`[batch, tokens, dim]` → `[batch, dim]`: the first token (`"cls"`) or the mean of all tokens (`"mean"`)."""

    def __init__(self, pooling="cls", **kwargs):
        super().__init__(**kwargs)
        if pooling not in VIT_POOLINGS:
            raise InvalidInputError(f"`pooling` must be one of {VIT_POOLINGS}, got {pooling!r}.")
        self.pooling = pooling

    def call(self, tokens):
        return tokens[:, 0] if self.pooling == "cls" else keras.ops.mean(tokens, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling}


def keras_hub_available():
    return importlib.util.find_spec("keras_hub") is not None


def check_keras_hub(model_name, weights=None, options=None):
    """Raise ValueError unless `keras_hub.<model_name>` with `options` can be built (see `VIT_OPTIONS`)."""
    if model_name not in KERAS_HUB_MODELS:
        raise InvalidInputError(f"model.encoder='{KERAS_HUB_PREFIX}{model_name}' is not supported; the KerasHub backbones "
                         f"amcl-keras builds are {[KERAS_HUB_PREFIX + n for n in KERAS_HUB_MODELS]}.")
    if not keras_hub_available():
        raise InvalidInputError(f"model.encoder='{KERAS_HUB_PREFIX}{model_name}' needs keras-hub, which is not installed. "
                         f"Install it (without its text dependencies) with: {KERAS_HUB_INSTALL}")
    _check_weights_file("model.encoder_weights", weights, (".weights.h5",))
    options = options or {}
    unknown = sorted(set(options) - set(VIT_OPTIONS))
    if unknown:
        raise InvalidInputError(f"model.encoder_options {unknown} are not options of {KERAS_HUB_PREFIX}{model_name}; "
                         f"those are {VIT_OPTIONS} (the defaults shown).")
    for key in ("patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_dim"):
        value = options.get(key, VIT_OPTIONS[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"model.encoder_options.{key}={value!r}: it must be a positive integer.")
    for key in ("dropout_rate", "attention_dropout"):
        value = options.get(key, VIT_OPTIONS[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise InvalidInputError(f"model.encoder_options.{key}={value!r}: it must be a number in [0, 1).")
    epsilon = options.get("layer_norm_epsilon", VIT_OPTIONS["layer_norm_epsilon"])
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise InvalidInputError(f"model.encoder_options.layer_norm_epsilon={epsilon!r}: it must be a number > 0.")
    if options.get("pooling", "cls") not in VIT_POOLINGS:
        raise InvalidInputError(f"model.encoder_options.pooling={options['pooling']!r}: one of {VIT_POOLINGS}.")
    hidden, heads = (options.get(key, VIT_OPTIONS[key]) for key in ("hidden_dim", "num_heads"))
    if hidden % heads:
        raise InvalidInputError(f"model.encoder_options: hidden_dim={hidden} must be divisible by num_heads={heads}.")


@register_encoder_family(KERAS_HUB_PREFIX, check=check_keras_hub, example="keras_hub.ViTBackbone")
def keras_hub_backbone(model_name, input_shape, synchronized_batch_norm=False, weights=None, options=None,
                       name=None):
    """A KerasHub ViT (`keras_hub.models.ViTBackbone`) from a configuration, random init, as an encoder:
    [0, 1] images → ×2 − 1 (ViT's [−1, 1] input convention) → ViTBackbone → `TokenPooling` → `[batch, hidden_dim]`.

    `options` (`model.encoder_options`): `VIT_OPTIONS` (patch size, hidden, layers, heads, MLP, dropouts,
    epsilon) and `pooling`: "cls" (the class token after the final layer norm, the default) or "mean" (the
    mean of the patch tokens; no class token is made). Layer norm only: `synchronized_batch_norm` changes
    nothing.

    Example:
    ```python
    encoder = amcl_keras.backbones.keras_hub_backbone(
        "ViTBackbone", (32, 32, 3), options={"hidden_dim": 64, "num_layers": 2, "num_heads": 2, "mlp_dim": 128})
    ```
    """
    check_keras_hub(model_name, weights, options)
    import keras_hub

    options = {**VIT_OPTIONS, **(options or {})}
    pooling = options.pop("pooling")
    height, width, channels = tuple(input_shape)
    for size, axis in ((height, "height"), (width, "width")):
        if size % options["patch_size"]:
            raise InvalidInputError(f"The image {axis} {size} is not divisible by model.encoder_options.patch_size="
                             f"{options['patch_size']}; set data.image_size or the patch size so that it is.")
    backbone = keras_hub.models.ViTBackbone(image_shape=(height, width, channels), use_class_token=pooling == "cls",
                                            name="vit_backbone", **options)
    inputs = keras.Input((height, width, channels), name="images")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="preprocessing")(inputs)
    outputs = TokenPooling(pooling, name="features")(backbone(x))
    return keras.Model(inputs, outputs, name=name or "vit_encoder")

