"""SimCLR-style view augmentations (docs/METHOD.md §6), on batches of float images in [0, 1].

The six families, by letter (`FAMILIES`): (a) random resized crop, (b) Gaussian blur,
(c) random grayscale, (d) colour jitter, (e) horizontal flip, and, for the stronger
multiple-augmentation setting, (f) solarization (p = 0.2, threshold 0.5, as BYOL). A preset is
a string of letters that includes (a) ("a", "abc", "abcde"; "simclr" = "abcde", the five
SimCLR families; "strong" = "abcdef", all six).

Which library, layer by layer (benchmarks/input_pipeline.py; 256 colour images 32×32 in tf.data,
2 CPU cores, ms per batch, Keras core vs keras-cv 0.9): (a) crop 15 vs 135 — Keras core has no
random-resized-crop, so `RandomResizedCrop` below builds it on `tf.image.crop_and_resize`;
(b) blur 30 vs 30; (c) grayscale 16 vs 37; (d) jitter 65 vs 91; (e) flip 13 vs 34. Keras core
is as fast or faster for every family and is where KerasCV's layers are maintained now, so the
presets use it; keras-cv layers still work as user augmenters (tested).
Where: in tf.data by default (`data.augment_on: dataset`): on 2 cores it delivers 92× (demo)
and 670× (ResNet-18) what the training step consumes; `augment_on: step` makes the views inside
the training step instead (measured 5 ms per demo batch, ~1% of the step).
On single-channel images the colour families (c) and the saturation/hue parts of (d) do
nothing and are left out.
"""

import math

import keras
import tensorflow as tf

from amcl_keras.constants import AUGMENTATION_FAMILIES as FAMILIES, parse_preset  # noqa: F401 (re-exported)
from amcl_keras.errors import InvalidInputError


@keras.saving.register_keras_serializable(package="amcl_keras")
class RandomResizedCrop(keras.layers.Layer):
    """Crop a random box (area fraction in `scale`, aspect ratio in `ratio`) and resize it.

    Each image of the batch gets its own box. Inference (training=False) resizes the whole
    image.

    Example:
    ```python
    crop = amcl_keras.augment.RandomResizedCrop(32)
    views = crop(images, training=True)     # [batch, 32, 32, channels]
    ```
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise InvalidInputError(f"`scale` must satisfy 0 < low <= high <= 1, got {scale!r}. SimCLR uses (0.08, 1.0).")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise InvalidInputError(f"`ratio` must satisfy 0 < low <= high, got {ratio!r}. SimCLR uses (3/4, 4/3).")
        self.size = int(size)
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)

    def call(self, images, training=True):
        images = tf.convert_to_tensor(images)
        batch = tf.shape(images)[0]
        if not training:
            return tf.image.resize(images, (self.size, self.size))
        area = tf.random.uniform([batch], self.scale[0], self.scale[1])
        log_ratio = tf.random.uniform([batch], math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = tf.exp(log_ratio)
        height = tf.minimum(tf.sqrt(area / aspect), 1.0)
        width = tf.minimum(tf.sqrt(area * aspect), 1.0)
        top = tf.random.uniform([batch]) * (1.0 - height)
        left = tf.random.uniform([batch]) * (1.0 - width)
        boxes = tf.stack([top, left, top + height, left + width], axis=1)
        crops = tf.image.crop_and_resize(images, boxes, tf.range(batch), (self.size, self.size))
        return tf.cast(crops, images.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, scale=list(self.scale), ratio=list(self.ratio))
        return config


@keras.saving.register_keras_serializable(package="amcl_keras")
class RandomApply(keras.layers.Layer):
    """Apply `layer` to each image of the batch with probability `rate` (else pass it through)."""

    def __init__(self, layer, rate=0.5, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate <= 1.0:
            raise InvalidInputError(f"`rate` must be a probability in [0, 1], got {rate!r}.")
        self.layer = layer
        self.rate = float(rate)

    def call(self, images, training=True):
        if not training:
            return images
        chosen = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < self.rate
        return tf.where(chosen, self.layer(images, training=True), images)

    def get_config(self):
        config = super().get_config()
        config.update(layer=keras.saving.serialize_keras_object(self.layer), rate=self.rate)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


def family_layer(letter, image_size, channels=3, crop_scale=(0.08, 1.0)):
    """The layer of one family (None where it does nothing: colour families on 1 channel)."""
    layers = keras.layers
    rgb = channels == 3
    if letter == "a":
        return RandomResizedCrop(image_size, scale=crop_scale, name="a_random_resized_crop")
    if letter == "b":
        kernel = max(3, int(round(0.1 * image_size)) // 2 * 2 + 1)  # ≈ 10% of the side, odd
        # factor=(p, p) fixes the per-image probability at p (a scalar is only an upper bound).
        return layers.RandomGaussianBlur(
            factor=(0.5, 0.5), kernel_size=kernel, sigma=(0.1, 2.0), value_range=(0, 1), name="b_gaussian_blur"
        )
    if letter == "c":
        return layers.RandomGrayscale(factor=0.2, name="c_grayscale") if rgb else None
    if letter == "d":
        colour = {"saturation_factor": 0.4, "hue_factor": 0.1} if rgb else {}
        jitter = layers.RandomColorJitter(value_range=(0, 1), brightness_factor=0.4, contrast_factor=0.4, **colour)
        return RandomApply(jitter, rate=0.8, name="d_colour_jitter")
    if letter == "e":
        return layers.RandomFlip("horizontal", name="e_flip")
    if letter == "f":
        solarize = layers.Solarization(threshold_factor=(0.5, 0.5), value_range=(0, 1))
        return RandomApply(solarize, rate=0.2, name="f_solarization")
    raise InvalidInputError(f"Unknown augmentation family {letter!r}; families are {FAMILIES!r}.")


ORDER = "aedcbf"  # SimCLR's order: crop, flip, colour jitter, grayscale, blur; then solarization


def view_augmenter(image_size, channels=3, preset="simclr", crop_scale=(0.08, 1.0)):
    """A `keras.layers.Pipeline` making one random view of a batch of float images in [0, 1].

    Example:
    ```python
    augment = amcl_keras.augment.view_augmenter(28, channels=1, preset="abcde")
    view1, view2 = augment(images), augment(images)   # independent randomness
    ```
    """
    letters = parse_preset(preset)
    stack = [family_layer(letter, image_size, channels, crop_scale) for letter in ORDER if letter in letters]
    return keras.layers.Pipeline([layer for layer in stack if layer is not None], name=f"views_{letters}")
