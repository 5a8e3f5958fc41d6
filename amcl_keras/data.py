"""Datasets: the shipped ones (offline), any tfds dataset by name, a `.npz` file of arrays, or a
folder of images.

Shipped (`SHIPPED_DATASETS`, in `amcl_keras/data/` with their licences): `fashion_mnist_subset`
(the default; grayscale 28x28, splits train/test) and `tuxpaint_stamps` (colour 32x32 crops of
Tux Paint's stamp photos, 8 classes, splits train/val/test with no source image shared between
them; `scripts/build_tuxpaint_stamps.py`).

`load` returns unbatched `(image uint8 [H, W, C], label)` pairs; `pretraining_views` turns
them into batches of two augmented views for `model.fit`.

Folders: `root/<split>/<label>/*.png|jpg|...` (the `tfds.folder_dataset.ImageFolder` layout,
labelled), or images anywhere under `root` (unlabeled pre-training: label -1). Every file is
checked before training: unreadable ones are skipped and counted (or stop the run, with
`on_bad_image="error"`); sizes are unified by resizing; grayscale and colour files are
converted to one channel count.
"""

import logging
import pathlib

import numpy as np
import tensorflow as tf
from amcl_keras.errors import EnvironmentProblemError, InvalidInputError

SHIPPED = "fashion_mnist_subset"  # the default dataset
# the datasets shipped in amcl_keras/data/<name>.npz, and their splits
SHIPPED_DATASETS = {"fashion_mnist_subset": ("train", "test"), "tuxpaint_stamps": ("train", "val", "test")}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
BAD_IMAGE_POLICIES = ("skip", "error")
log = logging.getLogger("amcl_keras.data")
SHIPPED_PATH = pathlib.Path(__file__).parent / "data" / "fashion_mnist_subset.npz"
# Fashion-MNIST's ten classes in label order (Zalando's README; tfds's `fashion_mnist` names them the same way):
# its shipped file holds no names, so they are kept here
FASHION_MNIST_CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                             "Bag", "Ankle boot")


def load_shipped(split="train", name=SHIPPED):
    """A shipped dataset as NumPy arrays: images uint8, labels `[N]` int64.

    `fashion_mnist_subset` (default): `[N, 28, 28, 1]`, splits train/test. `tuxpaint_stamps`:
    `[N, 32, 32, 3]`, splits train/val/test (class names: `shipped_class_names`).
    """
    if name not in SHIPPED_DATASETS:
        raise InvalidInputError(f"No shipped dataset {name!r}; the shipped ones are {sorted(SHIPPED_DATASETS)}.")
    splits = SHIPPED_DATASETS[name]
    if split not in splits:
        listed = ", ".join(repr(s) for s in splits[:-1]) + f" and {splits[-1]!r}"
        raise InvalidInputError(f"The shipped dataset {name!r} has the splits {listed}, got split={split!r}.")
    with np.load(SHIPPED_PATH.with_name(f"{name}.npz")) as arrays:
        return arrays[f"{split}_images"], arrays[f"{split}_labels"].astype(np.int64)


def shipped_class_names(name):
    """The class names of a shipped dataset, in label order (None where the file has none)."""
    if name not in SHIPPED_DATASETS:
        raise InvalidInputError(f"No shipped dataset {name!r}; the shipped ones are {sorted(SHIPPED_DATASETS)}.")
    if name == "fashion_mnist_subset":
        return list(FASHION_MNIST_CLASS_NAMES)
    with np.load(SHIPPED_PATH.with_name(f"{name}.npz")) as arrays:
        return arrays["class_names"].tolist() if "class_names" in arrays.files else None


def load_rgb_samples():
    """Five real colour photos (public domain / CC0, from scikit-image), `[5, 128, 128, 3]` uint8."""
    with np.load(pathlib.Path(__file__).parent / "data" / "rgb_samples.npz") as arrays:
        return arrays["images"]


def read_idx(path):
    """An MNIST-format idx file (gzip): 4-byte magic whose last byte is the rank, big-endian
    uint32 sizes, then uint8 data. E.g. Fashion-MNIST's `train-images-idx3-ubyte.gz`."""
    import gzip

    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    rank = raw[3]
    shape = np.frombuffer(raw[4 : 4 + 4 * rank], dtype=">u4").astype(int)
    return np.frombuffer(raw[4 + 4 * rank :], dtype=np.uint8).reshape(shape)


def load_npz(path, split="train"):
    """`<split>_images` (uint8 `[N, H, W, C]` or `[N, H, W]`) and `<split>_labels` from an `.npz` file.

    The shipped subset has this layout; so can any dataset kept as arrays, e.g.
    `np.savez(path, train_images=x, train_labels=y, test_images=xt, test_labels=yt)`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InvalidInputError(f"Dataset file {str(path)!r} {'is a folder' if path.is_dir() else 'does not exist'}. Give "
                         "data.dataset the path of an .npz file (relative to the working directory), a folder of images "
                         "or a tfds name.")
    with _open_npz(path) as arrays:
        keys = (f"{split}_images", f"{split}_labels")
        missing = [key for key in keys if key not in arrays.files]
        if missing:
            raise InvalidInputError(
                f"{str(path)!r} has no {missing} for split {split!r}; its arrays are {sorted(arrays.files)}. "
                "An .npz dataset holds <split>_images (uint8 [N, H, W, C]) and <split>_labels ([N] integers)."
            )
        images, labels = arrays[keys[0]], arrays[keys[1]]
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise InvalidInputError(
            f"{str(path)!r}: expected uint8 images [N, H, W, C] and N labels, got {images.dtype} {images.shape} "
            f"and {len(labels)} labels."
        )
    return images, labels.astype(np.int64)


def _open_npz(path):
    try:
        arrays = np.load(path)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise InvalidInputError("it holds one array, not named arrays")
        return arrays
    except Exception as error:  # truncated zip, not a zip: NumPy and zipfile raise several types
        raise InvalidInputError(f"Dataset file {str(path)!r} is not a readable .npz file ({type(error).__name__}: {error}). "
                         "Write it with np.savez(path, train_images=..., train_labels=..., ...).") from None


class FolderScan:
    """The images of one split of a folder dataset, checked: files, labels, classes, skipped files."""

    def __init__(self, root, split, on_bad_image="skip"):
        from PIL import Image

        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise InvalidInputError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}.")
        root = pathlib.Path(root)
        split_dir = root / split
        class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir()) if split_dir.is_dir() else []
        if class_dirs:
            self.classes = [d.name for d in class_dirs]
            candidates = [(f, i) for i, d in enumerate(class_dirs) for f in sorted(d.rglob("*")) if _is_image(f)]
        else:
            self.classes = []
            candidates = [(f, -1) for f in sorted(root.rglob("*")) if _is_image(f)]
        if not candidates:
            raise InvalidInputError(
                f"No images ({', '.join(IMAGE_EXTENSIONS)}) found for split {split!r} in {str(root)!r}. Expected "
                f"{root}/{split}/<label>/<image> (labelled, the tfds ImageFolder layout) or images anywhere "
                f"under {root} (unlabeled)."
            )
        self.files, self.labels, self.skipped, sizes, modes = [], [], [], [], set()
        for path, label in candidates:
            try:
                with Image.open(path) as image:
                    image.verify()
                with Image.open(path) as image:  # verify() leaves the file unusable; reopen for the size
                    sizes.append(image.size)
                    modes.add("L" if image.mode in ("L", "LA", "I", "I;16", "1") else "RGB")
            except Exception as error:  # PIL raises many types for broken files
                if on_bad_image == "error":
                    raise InvalidInputError(
                        f"Unreadable image {str(path)!r} ({type(error).__name__}: {error}). Remove or fix it, or set "
                        "data.on_bad_image: skip to skip such files (they are counted and reported)."
                    ) from None
                self.skipped.append(str(path))
                continue
            self.files.append(str(path))
            self.labels.append(label)
        if self.skipped:
            log.warning("Skipped %d unreadable image(s) in %s, e.g. %s", len(self.skipped), root, self.skipped[0])
        if not self.files:
            raise InvalidInputError(f"Every image under {str(root)!r} for split {split!r} is unreadable ({len(self.skipped)} files).")
        self.channels = 1 if modes == {"L"} else 3  # any colour file → colour (grayscale ones are replicated)
        self.size = min(sizes[0])  # the first image's shorter side, unless image_size is set
        self.mixed_sizes = len(set(sizes)) > 1


def _is_image(path):
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def load_folder(root, split="train", image_size=None, channels=None, on_bad_image="skip"):
    """Unbatched `(image uint8 [S, S, C], label)` from a folder (see the module docstring).

    S = `image_size`, else the first image's shorter side; C = `channels`, else 1 when every
    file is grayscale and 3 otherwise. Returns `(dataset, scan)`.
    """
    scan = FolderScan(root, split, on_bad_image)
    size = image_size or scan.size
    channels = channels or scan.channels

    def read(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        image = tf.image.resize(image, (size, size))
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), label

    files = tf.data.Dataset.from_tensor_slices((scan.files, np.asarray(scan.labels, np.int64)))
    dataset = files.map(read, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset, scan


def load(name=SHIPPED, split="train", data_dir=None, download=True, image_size=None, channels=None, on_bad_image="skip"):
    """Unbatched `(image, label)` pairs from a shipped dataset, a tfds dataset, an `.npz` file or a folder.

    Example:
    ```python
    train = amcl_keras.data.load("fashion_mnist_subset", "train")   # offline, shipped
    val = amcl_keras.data.load("tuxpaint_stamps", "val")             # offline, shipped, colour
    cifar = amcl_keras.data.load("cifar10", "train")                 # tfds (downloads once)
    arrays = amcl_keras.data.load("my_data.npz", "train")            # train_images, train_labels
    ```
    """
    if name in SHIPPED_DATASETS or name.endswith(".npz"):
        images, labels = load_shipped(split, name) if name in SHIPPED_DATASETS else load_npz(name, split)
        return tf.data.Dataset.from_tensor_slices((images, labels))
    if pathlib.Path(name).is_dir():  # image_size, channels and on_bad_image apply to folders
        return load_folder(name, split, image_size, channels, on_bad_image)[0]
    if pathlib.Path(name).is_file():
        raise InvalidInputError(f"Dataset {name!r} is a file but not an .npz file: data.dataset takes an .npz file, a folder of "
                         "images or a tfds name.")
    if "/" in name or name.startswith("."):
        raise InvalidInputError(f"Dataset folder {name!r} does not exist (a tfds name has no '/'). Check the path (relative "
                         "to the working directory) or give a tfds name such as 'cifar10'.")
    import tensorflow_datasets as tfds

    try:
        dataset = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir, download=download)
    except Exception as error:  # tfds raises several types (DatasetNotFoundError, ConnectionError, ...)
        raise EnvironmentProblemError(
            f"Could not load tfds dataset {name!r} (split {split!r}, data_dir {data_dir!r}): {error}\n"
            f"Check the name and split (see tfds.list_builders()). To use it offline, prepare it once on a "
            f"machine with network access (`tfds build {name} --data_dir DIR`, or tfds.load(..., data_dir=DIR)), "
            f"copy DIR here and set data.data_dir: DIR (and data.download: false); or use a folder of images, "
            f"or an offline dataset shipped with amcl_keras: {', '.join(map(repr, SHIPPED_DATASETS))}."
        ) from error
    image_spec = dataset.element_spec[0]
    if image_spec.shape.rank != 3:
        raise InvalidInputError(f"Dataset {name!r} gives images of shape {image_spec.shape}; expected [height, width, channels].")
    return dataset


def to_float_images(images, image_size=None):
    """uint8 images → float32 in [0, 1], resized (bilinear) when `image_size` is given: an int for a square
    size, or `(height, width)`."""
    images = tf.cast(images, tf.float32) / 255.0
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        images = tf.image.resize(images, size)
    return images


def pretraining_views(dataset, batch_size, augmenter, shuffle_buffer=10_000, seed=None, cache=True):
    """Batches of `(view1, view2)`: each view is `augmenter` applied with its own randomness.

    The last incomplete batch is dropped (a fixed global batch). `augmenter` is any callable on
    a batch of float images in [0, 1] (a Keras layer or `keras.layers.Pipeline`); with
    `augmenter=None` the batches are the float images themselves, for a model that augments
    inside its training step (`augmenter=` on the method). Under a `tf.distribute` strategy,
    `fit` splits each global batch over the replicas; across workers the dataset is sharded by
    data (each worker keeps every N-th batch), set here explicitly since the sources are not files.
    """
    images = dataset.map(lambda image, label: image)
    if cache:
        images = images.cache()
    images = images.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    images = images.batch(batch_size, drop_remainder=True)

    def two_views(batch):
        batch = to_float_images(batch)
        if augmenter is None:
            return batch
        return augmenter(batch, training=True), augmenter(batch, training=True)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    views = images.map(two_views, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return views.with_options(options)


def labelled_arrays(name=SHIPPED, split="train", data_dir=None, max_examples=None, download=True, **folder_options):
    """A labelled split as NumPy arrays (for evaluation), at most `max_examples` of them.

    Labels are -1 for an unlabeled folder. `folder_options`: image_size, channels, on_bad_image.
    """
    if name in SHIPPED_DATASETS or name.endswith(".npz"):
        images, labels = load_shipped(split, name) if name in SHIPPED_DATASETS else load_npz(name, split)
    else:
        dataset = load(name, split, data_dir, download, **folder_options)
        if max_examples:
            dataset = dataset.take(max_examples)
        pairs = list(dataset.batch(1024).as_numpy_iterator())
        images = np.concatenate([p[0] for p in pairs])
        labels = np.concatenate([p[1] for p in pairs])
    if max_examples:
        images, labels = images[:max_examples], labels[:max_examples]
    return images, labels
