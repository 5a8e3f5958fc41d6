"""Your own images through a trained encoder: embeddings (`amcl embed`), nearest neighbours (`amcl neighbours`)
and a 2-D map of embeddings (`amcl report`).

An encoder comes from a run directory (its `encoder.keras`) or from any verified export (`amcl export`): the
export folder, or one artefact in it (`saved_model/`, `encoder.onnx`, `encoder.tflite`, the int8 files); all of
them map uint8 images to the same embeddings (up to the export's verified tolerance).

Example:
```python
import amcl_keras as amcl
embedder = amcl.embedding.open_embedder("runs/simclr-demo")          # or "runs/simclr-demo/export/encoder.onnx"
images, labels = amcl.data.load_shipped("test")
vectors = amcl.embedding.embed(embedder, images[:500])               # float32 [500, feature_dim]
indices, similarities = amcl.embedding.nearest_neighbours(vectors, vectors[:8], k=5, exclude_self=True)
```
"""

import csv
import dataclasses
import pathlib
import typing

import keras
import numpy as np

from amcl_keras import data, export as export_lib, runs
from amcl_keras.errors import InvalidInputError

# the float artefacts first: an export folder without --format is read through the first of these it holds
FORMAT_PREFERENCE = ("saved_model", "onnx", "litert", "onnx_int8", "litert_int8")


@dataclasses.dataclass(frozen=True)
class Embedder:
    """uint8 images `[N, height, width, channels]` at `size` → float32 embeddings `[N, feature_dim]`."""

    run: typing.Callable  # one batch of uint8 images → embeddings
    size: tuple  # (height, width) the images are resized to before the encoder
    channels: int
    description: str  # what computes the embeddings, for messages and the index file


def _keras_embedder(run_dir):
    encoder, _ = runs.load_run(run_dir)
    shape = tuple(encoder.inputs[0].shape[1:])
    if len(shape) != 3 or None in shape:
        size = runs.load_config(run_dir).data.image_size
        if not size:
            raise InvalidInputError(f"The encoder of {str(run_dir)!r} takes images of any size {shape} and its config "
                                    "sets no data.image_size: export it (`amcl export`) and embed with the export.")
        shape = (size, size, shape[-1])

    def run(images):
        return np.asarray(encoder(data.to_float_images(images), training=False), np.float32)

    return Embedder(run, tuple(shape[:2]), int(shape[2]), f"keras ({pathlib.Path(run_dir) / runs.ENCODER})")


def _export_embedder(export_dir, format):
    metadata = export_lib.read_metadata(export_dir)
    available = metadata["formats"]
    if format is None:
        format = next((name for name in FORMAT_PREFERENCE if name in available), None)
    metadata = export_lib.read_metadata(export_dir, format)
    height, width = metadata["input"]["nominal_size"]
    channels = int(metadata["input"]["shape"][-1])
    run = export_lib.open_artefact(export_dir, format, metadata)
    path = pathlib.Path(export_dir) / available[format]["path"]
    return Embedder(lambda images: np.asarray(run(images), np.float32), (int(height), int(width)), channels,
                    f"{format} ({path})")


def open_embedder(source, format=None):
    """The `Embedder` of `source`: a run directory (its Keras encoder, or with `format` its export's artefact), an
    export folder (`format`, default the first float artefact it holds) or one artefact inside an export folder."""
    source = pathlib.Path(source)
    if not source.exists():
        raise InvalidInputError(f"{str(source)!r} does not exist. Pass a run directory written by `amcl train`, an "
                                "export folder written by `amcl export`, or an artefact in one (e.g. export/encoder.onnx).")
    if source.is_dir() and (source / runs.ENCODER).is_file():
        return _keras_embedder(source) if format is None else _export_embedder(source / runs.EXPORT, format)
    if source.is_dir() and (source / export_lib.METADATA).is_file():
        return _export_embedder(source, format)
    folder = source.parent
    if (folder / export_lib.METADATA).is_file():
        formats = export_lib.read_metadata(folder)["formats"]
        named = [name for name, info in formats.items() if (folder / info["path"]).resolve() == source.resolve()]
        if named and format not in (None, named[0]):
            raise InvalidInputError(f"{str(source)!r} is the {named[0]} artefact, not {format}: drop --format or pass "
                                    f"the export folder {str(folder)!r}.")
        if named:
            return _export_embedder(folder, named[0])
    raise InvalidInputError(
        f"{str(source)!r} is neither a run directory (no {runs.ENCODER}), an export folder (no "
        f"{export_lib.METADATA}) nor an artefact listed in its folder's {export_lib.METADATA}. Pass the folder "
        "`amcl train` or `amcl export` wrote, or a file inside an export folder."
    )


@dataclasses.dataclass
class ImageSet:
    """Images read for embedding, with where each came from and its label (class folder name, or None)."""

    images: np.ndarray  # uint8 [N, height, width, channels]
    sources: list
    labels: list
    skipped: list  # files that could not be read as images

    def take(self, rows):
        """The images at `rows` (a slice or an index array), in that order; the skipped list is kept."""
        rows = np.arange(len(self.images))[rows]
        return ImageSet(self.images[rows], [self.sources[i] for i in rows], [self.labels[i] for i in rows], self.skipped)


def _image_files(paths):
    """(file, label) for every image file given, or found under a given folder (label: its first sub-folder)."""
    found = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in data.IMAGE_EXTENSIONS)
            found += [(f, f.relative_to(path).parts[0] if len(f.relative_to(path).parts) > 1 else None) for f in files]
        elif path.is_file():
            found.append((path, None))
        else:
            raise InvalidInputError(f"{str(path)!r} does not exist: pass image files or folders of images "
                                    f"({', '.join(data.IMAGE_EXTENSIONS)}).")
    if not found:
        raise InvalidInputError(f"No image files ({', '.join(data.IMAGE_EXTENSIONS)}) in {[str(p) for p in paths]}.")
    return found


def read_images(paths, size, channels):
    """Every image file in `paths` (files or folders, searched recursively), decoded, converted to `channels` and
    resized (bilinear) to `size` = (height, width). Unreadable files are skipped and listed."""
    from PIL import Image

    images, sources, labels, skipped = [], [], [], []
    for path, label in _image_files(paths):
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
                array = np.asarray(image, np.uint8)
        except Exception:  # PIL raises many types for a broken file
            skipped.append(str(path))
            continue
        images.append(array.reshape(size[0], size[1], channels))
        sources.append(str(path))
        labels.append(label)
    if not images:
        raise InvalidInputError(f"None of the {len(skipped)} image files could be read, e.g. {skipped[0]!r}.")
    return ImageSet(np.stack(images), sources, labels, skipped)


def dataset_images(name, split, size, channels, max_examples=None, data_dir=None, download=True):
    """A dataset split (shipped, tfds, .npz or folder; `data.labelled_arrays`) as an `ImageSet` at `size`."""
    images, labels = data.labelled_arrays(name, split, data_dir, max_examples, download)
    if images.shape[-1] != channels:
        if images.shape[-1] == 1:
            images = np.repeat(images, channels, axis=-1)
        else:
            raise InvalidInputError(f"Dataset {name!r} has {images.shape[-1]}-channel images; the encoder takes "
                                    f"{channels}-channel images.")
    if tuple(images.shape[1:3]) != tuple(size):
        images = np.asarray(keras.ops.convert_to_numpy(data.to_float_images(images, size)) * 255 + 0.5, np.uint8)
    names = data.shipped_class_names(name) if name in data.SHIPPED_DATASETS else None
    return ImageSet(images, [f"{name}:{split}:{i}" for i in range(len(images))],
                    [names[int(y)] if names else int(y) for y in labels], [])


def embed(embedder, images, batch_size=256, verbose=0):
    """Embeddings (float32 `[N, feature_dim]`) of uint8 `images` at the embedder's size; a progress bar with
    `verbose=1`."""
    images = np.asarray(images)
    expected = (*embedder.size, embedder.channels)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise InvalidInputError(f"Images to embed must be uint8 [N, {', '.join(map(str, expected))}], got "
                                f"{images.dtype} {list(images.shape)}; read files with read_images(paths, size, channels).")
    progress = keras.utils.Progbar(len(images), unit_name="image", verbose=verbose)
    out = []
    for start in range(0, len(images), batch_size):
        out.append(embedder.run(images[start : start + batch_size]))
        progress.add(len(out[-1]))
    return np.concatenate(out)


def write_embeddings(path, embeddings, image_set, description):
    """`path` (.npy, float32 `[N, feature_dim]`) and next to it `path` with `.csv`: row, source, label, and the
    encoder that computed them in the header comment. Returns the two paths."""
    path = pathlib.Path(path)
    if path.suffix != ".npy":
        raise InvalidInputError(f"--out must name a .npy file (the index is written next to it as .csv), got {str(path)!r}.")
    index = path.with_suffix(".csv")
    path.parent.mkdir(parents=True, exist_ok=True)

    def write_index(file):
        with open(file, "w", newline="", encoding="utf-8") as handle:
            handle.write(f"# embeddings of {len(embeddings)} images by {description}\n")
            writer = csv.writer(handle)
            writer.writerow(["row", "source", "label"])
            writer.writerows((i, s, "" if y is None else y) for i, (s, y) in enumerate(zip(image_set.sources, image_set.labels)))

    runs.atomic_write(path, lambda file: np.save(file, embeddings.astype(np.float32)))
    runs.atomic_write(index, write_index)
    return path, index


def nearest_neighbours(gallery, queries, k=8, exclude_self=False):
    """Indices `[Q, k]` into `gallery` of each query's k most cosine-similar embeddings, and their similarities.
    `exclude_self`: the queries are `gallery[:Q]`, so each query's own row is left out."""
    if k < 1 or k > len(gallery) - int(exclude_self):
        raise InvalidInputError(f"k must be between 1 and {len(gallery) - int(exclude_self)} (the gallery's size"
                                f"{' less the query itself' if exclude_self else ''}), got {k}.")
    unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True).clip(1e-12)
    query_unit = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    similarities = query_unit @ unit.T
    if exclude_self:
        similarities[np.arange(len(queries)), np.arange(len(queries))] = -np.inf
    indices = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return indices, np.take_along_axis(similarities, indices, axis=1)


def label_agreement(query_labels, gallery_labels, indices):
    """The share of neighbours whose label is their query's (None when labels are unknown)."""
    if any(y is None for y in query_labels) or any(y is None for y in gallery_labels):
        return None
    gallery_labels = np.asarray(gallery_labels, dtype=object)
    return float(np.mean(gallery_labels[indices] == np.asarray(query_labels, dtype=object)[:, None]))


def write_neighbour_grid(path, queries, query_labels, gallery, gallery_labels, indices, similarities):
    """A PNG: one row per query, the query then its neighbours with their cosine similarity (green: same label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, k = indices.shape
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(rows, k + 1, figsize=(1.3 * (k + 1), 1.45 * rows), squeeze=False)
    show = dict(cmap="gray", vmin=0, vmax=255) if queries.shape[-1] == 1 else {}
    for row in range(rows):
        axes[row, 0].imshow(queries[row].squeeze(-1) if queries.shape[-1] == 1 else queries[row], **show)
        axes[row, 0].set_title("query" + ("" if query_labels[row] is None else f"\n{query_labels[row]}"), fontsize=7)
        for column, (index, similarity) in enumerate(zip(indices[row], similarities[row]), start=1):
            image = gallery[index]
            axes[row, column].imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, **show)
            label = gallery_labels[index]
            same = label is not None and label == query_labels[row]
            axes[row, column].set_title(f"{similarity:.3f}" + ("" if label is None else f"\n{label}"), fontsize=7,
                                        color="green" if same else "black")
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    runs.atomic_write(path, lambda file: figure.savefig(file, dpi=100, format="png"))
    plt.close(figure)
    return path


def map_2d(embeddings, method="auto", seed=0):
    """A 2-D map `[N, 2]` of embeddings: t-SNE when scikit-learn is installed (`method="auto"` or `"tsne"`),
    otherwise PCA (NumPy). Returns `(points, method_used)`."""
    if method not in ("auto", "tsne", "pca"):
        raise InvalidInputError(f"map method must be 'auto', 'tsne' or 'pca', got {method!r}.")
    centred = embeddings - embeddings.mean(axis=0)
    if method != "pca":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            if method == "tsne":
                raise InvalidInputError("t-SNE needs scikit-learn: `pip install scikit-learn`, or use method='pca'.") from None
        else:
            perplexity = float(min(30, max(2, (len(embeddings) - 1) // 3)))
            return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(centred), "t-SNE"
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T, "PCA"
