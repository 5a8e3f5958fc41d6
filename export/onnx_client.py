"""Embed a folder of images with an exported encoder (ONNX) and print each image's nearest neighbours.

    python export/onnx_client.py runs/<run>/export path/to/images [--top 3] [--format onnx_int8]

Needs only numpy, pillow and onnxruntime. Images are read as they are (PNG/JPEG, any size),
converted to the model's channel count and resized to its nominal size with Pillow so they
batch together; the model scales them to [0, 1] itself (see metadata.json).
"""

import argparse
import json
import pathlib
import sys

import numpy as np

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_images(folder, size, channels):
    from PIL import Image

    paths = sorted(p for p in pathlib.Path(folder).iterdir() if p.suffix.lower() in EXTENSIONS)
    if not paths:
        raise SystemExit(f"No images ({', '.join(sorted(EXTENSIONS))}) in {folder!r}.")
    batch = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
        batch.append(array[..., None] if channels == 1 else array)
    return paths, np.stack(batch)


def embed(export_dir, images, format="onnx"):
    import onnxruntime

    metadata = json.loads((pathlib.Path(export_dir) / "metadata.json").read_text())
    info = metadata["formats"][format]
    session = onnxruntime.InferenceSession(str(pathlib.Path(export_dir) / info["path"]), providers=["CPUExecutionProvider"])
    return session.run([metadata["output"]["name"]], {info["input_name"]: images})[0]


def nearest_neighbours(embeddings, top):
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1)[:, :top]
    return order, np.take_along_axis(similarity, order, axis=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", help="folder written by `amcl export` (holds encoder.onnx, metadata.json)")
    parser.add_argument("images", help="folder of images")
    parser.add_argument("--top", type=int, default=3, help="neighbours to print per image")
    parser.add_argument("--format", choices=["onnx", "onnx_int8"], default="onnx",
                        help="the float model (encoder.onnx) or the int8-weight one (encoder_int8.onnx)")
    args = parser.parse_args(argv)
    metadata = json.loads((pathlib.Path(args.export_dir) / "metadata.json").read_text())
    if args.format not in metadata["formats"]:
        raise SystemExit(f"{args.export_dir!r} has no {args.format} model (it holds {sorted(metadata['formats'])}); "
                         f"export with `amcl export RUN_DIR --formats {args.format}`.")
    channels = metadata["input"]["shape"][-1]
    paths, images = load_images(args.images, metadata["input"]["nominal_size"], channels)
    embeddings = embed(args.export_dir, images, args.format)
    order, similarity = nearest_neighbours(embeddings, min(args.top, len(paths) - 1))
    print(f"{len(paths)} images, embedding size {embeddings.shape[1]}")
    for index, path in enumerate(paths):
        neighbours = ", ".join(f"{paths[j].name} ({s:.3f})" for j, s in zip(order[index], similarity[index]))
        print(f"{path.name}: {neighbours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
