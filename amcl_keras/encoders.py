"""Backbones: any Keras model mapping images `[batch, H, W, C]` (floats in [0, 1]) to `[batch, F]`."""

import keras

from amcl_keras import backbones, registry  # noqa: F401 (backbones registers the encoder families)
from amcl_keras.normalization import SyncBatchNormalization
from amcl_keras.registry import register_encoder

layers = keras.layers


def _conv_bn_relu(x, filters, strides, synchronized, name, kernel=3):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = SyncBatchNormalization(synchronized=synchronized, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@register_encoder("small_convnet")
def small_convnet(input_shape=(28, 28, 1), width=32, synchronized_batch_norm=False, name="small_convnet"):
    """Three 3×3 conv blocks (width, 2·width, 4·width; the last two stride 2) and global pooling.

    Fast enough for the CPU demo: feature size 4·width.

    Example:
    ```python
    encoder = amcl_keras.encoders.small_convnet((28, 28, 1), width=16)   # → [batch, 64]
    ```
    """
    inputs = keras.Input(tuple(input_shape), name="images")
    x = inputs
    for index, (multiplier, strides) in enumerate(((1, 1), (2, 2), (4, 2))):
        x = _conv_bn_relu(x, width * multiplier, strides, synchronized_batch_norm, f"block{index}")
    outputs = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, outputs, name=name)


def _basic_block(x, filters, strides, synchronized, name):
    y = _conv_bn_relu(x, filters, strides, synchronized, f"{name}_a")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(y)
    y = SyncBatchNormalization(synchronized=synchronized, name=f"{name}_b_bn")(y)
    return _residual(x, y, filters, strides, synchronized, name)


def _residual(x, y, filters, strides, synchronized, name):
    """ReLU(y + shortcut): x itself, or a 1×1 projection with batch norm when the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_proj_conv")(x)
        shortcut = SyncBatchNormalization(synchronized=synchronized, name=f"{name}_proj_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


@register_encoder("resnet18_cifar")
def resnet18_cifar(input_shape=(32, 32, 3), width=64, synchronized_batch_norm=False, name="resnet18_cifar"):
    """ResNet-18 with the CIFAR stem (3×3 stride-1 conv, no max-pool), as the AMCL authors use.

    Feature size 8·width (512 at the default width).

    Example:
    ```python
    encoder = amcl_keras.encoders.resnet18_cifar((32, 32, 3))   # → [batch, 512]
    ```
    """
    return _cifar_resnet(input_shape, width, synchronized_batch_norm, name, _basic_block, (2, 2, 2, 2))


def _cifar_resnet(input_shape, width, synchronized, name, block_fn, blocks_per_stage):
    """CIFAR stem (3×3 stride 1, no max-pool), four stages of `block_fn` at width·{1, 2, 4, 8} (stride 2 from
    the second stage on), global average pooling."""
    inputs = keras.Input(tuple(input_shape), name="images")
    x = _conv_bn_relu(inputs, width, 1, synchronized, "stem")
    for stage, blocks in enumerate(blocks_per_stage):
        for block in range(blocks):
            strides = 2 if stage and not block else 1
            x = block_fn(x, width * 2**stage, strides, synchronized, f"stage{stage}_block{block}")
    outputs = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, outputs, name=name)


def _bottleneck_block(x, planes, strides, synchronized, name):
    """torchvision's Bottleneck: 1×1 (planes) → 3×3 (planes, stride) → 1×1 (4·planes), projection when the shape changes."""
    y = _conv_bn_relu(x, planes, 1, synchronized, f"{name}_a", kernel=1)
    y = _conv_bn_relu(y, planes, strides, synchronized, f"{name}_b")
    y = layers.Conv2D(4 * planes, 1, use_bias=False, name=f"{name}_c_conv")(y)
    y = SyncBatchNormalization(synchronized=synchronized, name=f"{name}_c_bn")(y)
    return _residual(x, y, 4 * planes, strides, synchronized, name)


@register_encoder("resnet50_cifar")
def resnet50_cifar(input_shape=(32, 32, 3), width=64, synchronized_batch_norm=False, name="resnet50_cifar"):
    """ResNet-50 (bottleneck blocks 3-4-6-3) with the CIFAR stem (3×3 stride-1 conv, no max-pool), as the
    paper's ResNet-50 runs on CIFAR.

    Feature size 32·width (2048 at the default width); 23.5M trainable weights at width 64 (torchvision's
    ResNet-50 without its classifier and with the 3×3 stem).

    Example:
    ```python
    encoder = amcl_keras.encoders.resnet50_cifar((32, 32, 3))   # → [batch, 2048]
    ```
    """
    return _cifar_resnet(input_shape, width, synchronized_batch_norm, name, _bottleneck_block, (3, 4, 6, 3))


ENCODERS = registry.ENCODERS  # name -> builder, filled by @register_encoder


def get(name, input_shape, width=None, synchronized_batch_norm=False, weights=None, options=None):
    """Build an encoder by name: a registered one (`small_convnet`, `resnet18_cifar`, `resnet50_cifar`; `width`
    applies to these), `keras.applications.<Name>` or `keras_hub.ViTBackbone` (`amcl_keras.backbones`; `options`
    are the family's own settings). `weights`: a local weights file (keras.applications: its no-top `.h5` /
    `.weights.h5`; otherwise a `.weights.h5` saved from the same encoder); nothing is downloaded.

    Example:
    ```python
    encoder = amcl_keras.encoders.get("keras.applications.MobileNetV3Small", (32, 32, 3))   # → [batch, 576]
    ```
    """
    registry.check_encoder(name, weights, options)
    family, model_name = registry.encoder_family(name)
    if family is not None:
        encoder = family.builder(model_name, tuple(input_shape), synchronized_batch_norm=synchronized_batch_norm,
                                 weights=weights if family.weights else None, options=options)
    else:
        kwargs = {"synchronized_batch_norm": synchronized_batch_norm}
        if width is not None:
            kwargs["width"] = width
        encoder = ENCODERS[name](tuple(input_shape), **kwargs)
    if weights is not None and not (family and family.weights):
        backbones.require_weights_file(weights)
        backbones.load_weights_file(lambda: encoder.load_weights(weights), weights, f"encoder {name!r}")
    return encoder
