"""Build the small set of real colour photos shipped in `amcl_keras/data/rgb_samples.npz`.

The photos come from scikit-image's bundled sample data, chosen for their licences (public
domain or CC0; see amcl_keras/data/LICENSE-rgb-samples.txt). They serve tests and previews of
the colour augmentations, which do nothing visible on the grayscale Fashion-MNIST images.

    pip install scikit-image && python scripts/build_rgb_samples.py
"""

import pathlib

import numpy as np

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
TARGET = pathlib.Path(__file__).resolve().parents[1] / "amcl_keras" / "data" / "rgb_samples.npz"


def main(size=128):
    import skimage.data
    from PIL import Image

    photos = []
    for name in NAMES:
        image = getattr(skimage.data, name)()
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        square = Image.fromarray(image[top : top + side, left : left + side, :3])
        photos.append(np.asarray(square.resize((size, size), Image.BICUBIC), np.uint8))
    np.savez_compressed(TARGET, images=np.stack(photos), names=np.array(NAMES))
    print(TARGET, TARGET.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
