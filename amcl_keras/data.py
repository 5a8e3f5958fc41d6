"""Datasets: the shipped Fashion-MNIST subset (offline default) or any tfds dataset by name.

`load` returns unbatched `(image uint8 [H, W, C], label)` pairs; `pretraining_views` turns
them into batches of two augmented views for `model.fit`.
"""

import pathlib

import numpy as np
import tensorflow as tf

SHIPPED = "fashion_mnist_subset"
SHIPPED_PATH = pathlib.Path(__file__).parent / "data" / "fashion_mnist_subset.npz"


def load_shipped(split="train"):
    """The shipped subset as NumPy arrays: images `[N, 28, 28, 1]` uint8, labels `[N]` int64."""
    if split not in ("train", "test"):
        raise ValueError(f"The shipped subset has the splits 'train' and 'test', got split={split!r}.")
    with np.load(SHIPPED_PATH) as arrays:
        return arrays[f"{split}_images"], arrays[f"{split}_labels"]


def load_rgb_samples():
    """Five real colour photos (public domain / CC0, from scikit-image), `[5, 128, 128, 3]` uint8."""
    with np.load(pathlib.Path(__file__).parent / "data" / "rgb_samples.npz") as arrays:
        return arrays["images"]


def load(name=SHIPPED, split="train", data_dir=None, download=True):
    """Unbatched `(image, label)` pairs from the shipped subset or a tfds dataset.

    Example:
    ```python
    train = amcl_keras.data.load("fashion_mnist_subset", "train")   # offline, shipped
    cifar = amcl_keras.data.load("cifar10", "train")                 # tfds (downloads once)
    ```
    """
    if name == SHIPPED:
        images, labels = load_shipped(split)
        return tf.data.Dataset.from_tensor_slices((images, labels))
    import tensorflow_datasets as tfds

    try:
        dataset = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir, download=download)
    except Exception as error:  # tfds raises several types (DatasetNotFoundError, ConnectionError, ...)
        raise RuntimeError(
            f"Could not load tfds dataset {name!r} (split {split!r}, data_dir {data_dir!r}): {error}\n"
            f"Check the name and split (see tfds.list_builders()), prepare the data once with network "
            f"access (or point data_dir at prepared data), or use the offline dataset {SHIPPED!r}."
        ) from error
    image_spec = dataset.element_spec[0]
    if image_spec.shape.rank != 3:
        raise ValueError(f"Dataset {name!r} gives images of shape {image_spec.shape}; expected [height, width, channels].")
    return dataset


def to_float_images(images, image_size=None):
    """uint8 images → float32 in [0, 1], resized to `image_size` (square) when given."""
    images = tf.cast(images, tf.float32) / 255.0
    if image_size is not None:
        images = tf.image.resize(images, (image_size, image_size))
    return images


def pretraining_views(dataset, batch_size, augmenter, shuffle_buffer=10_000, seed=None, cache=True):
    """Batches of `(view1, view2)`: each view is `augmenter` applied with its own randomness.

    The last incomplete batch is dropped (a fixed global batch). `augmenter` is any callable on
    a batch of float images in [0, 1] (a Keras layer or `keras.layers.Pipeline`).
    """
    images = dataset.map(lambda image, label: image)
    if cache:
        images = images.cache()
    images = images.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    images = images.batch(batch_size, drop_remainder=True)

    def two_views(batch):
        batch = to_float_images(batch)
        return augmenter(batch, training=True), augmenter(batch, training=True)

    return images.map(two_views, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def labelled_arrays(name=SHIPPED, split="train", data_dir=None, max_examples=None, download=True):
    """A labelled split as NumPy arrays (for evaluation), at most `max_examples` of them."""
    if name == SHIPPED:
        images, labels = load_shipped(split)
    else:
        dataset = load(name, split, data_dir, download)
        if max_examples:
            dataset = dataset.take(max_examples)
        pairs = list(dataset.batch(1024).as_numpy_iterator())
        images = np.concatenate([p[0] for p in pairs])
        labels = np.concatenate([p[1] for p in pairs])
    if max_examples:
        images, labels = images[:max_examples], labels[:max_examples]
    return images, labels
