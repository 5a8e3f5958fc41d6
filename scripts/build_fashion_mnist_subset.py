"""Build the Fashion-MNIST subset shipped in ``amcl_keras/data/``.

The originals come from the Debian package ``dataset-fashion-mnist`` (MIT, Zalando SE):

    apt-get install -y dataset-fashion-mnist
    python scripts/build_fashion_mnist_subset.py

The subset is stratified: the first ``--train-per-class`` training images of every class
(in the original file order) and the first ``--test-per-class`` test images of every class.
"""

import argparse
import pathlib

import numpy as np

from amcl_keras import data

SOURCE = pathlib.Path("/usr/share/datasets/fashion-mnist")
TARGET = pathlib.Path(__file__).resolve().parents[1] / "amcl_keras" / "data" / "fashion_mnist_subset.npz"


def stratified_head(images, labels, per_class):
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    keep.sort()
    return images[keep], labels[keep]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=pathlib.Path, default=SOURCE)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--out", type=pathlib.Path, default=TARGET)
    args = parser.parse_args()
    arrays = {}
    for split, prefix, per_class in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        images = data.read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
        labels = data.read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        images, labels = stratified_head(images, labels, per_class)
        arrays[f"{split}_images"] = images[..., None]  # [N, 28, 28, 1] uint8
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print({k: v.shape for k, v in arrays.items()}, args.out, args.out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
