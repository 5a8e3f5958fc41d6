"""Encoder latency, throughput and size on disk: Keras vs every export format, side by side.

Exports an encoder (a run directory, or a fresh one by name) to every format (SavedModel, ONNX,
ONNX int8, LiteRT, LiteRT int8), then times Keras and each reloaded artefact (the runners of
`amcl_keras.export.open_artefact`: TF SavedModel signature, onnxruntime, LiteRT interpreter with
all cores) on uint8 images at batch 1 and 64 in one process, interleaving the paths round by
round. Prints JSON (with each artefact's size and measured difference to Keras) and a table.

    python -m benchmarks.export_latency                         # small_convnet on 28x28x1
    python -m benchmarks.export_latency --encoder resnet18_cifar --image-size 32 --channels 3
    python -m benchmarks.export_latency --run-dir runs/simclr-...
"""

import argparse
import os
import statistics
import tempfile

import keras
import numpy as np
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import export
from amcl_keras.data import to_float_images
from benchmarks import harness


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir")
    parser.add_argument("--encoder", default="small_convnet")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per path and batch")
    harness.add_json_option(parser)
    args = parser.parse_args()

    if args.run_dir:
        encoder, _ = amcl.runs.load_run(args.run_dir)
    else:
        keras.utils.set_random_seed(0)
        encoder = amcl.encoders.get(args.encoder, (args.image_size, args.image_size, args.channels))
    height, _, channels = encoder.inputs[0].shape[1:]
    workdir = tempfile.mkdtemp(prefix="amcl-export-bench-")
    export_dir = os.path.join(workdir, "export")
    metadata = export.export_encoder(encoder, export_dir, formats=export.FORMATS, images=_images(8, height, channels))

    keras_fn = tf.function(lambda x: encoder(to_float_images(x, height), training=False))
    paths = {"keras": lambda x: keras_fn(tf.constant(x)).numpy()}
    paths.update({name: export.open_artefact(export_dir, name, metadata) for name in metadata["formats"]})
    verification = metadata["verification"]
    result = {
        "benchmark": "export_latency",
        "encoder": encoder.name,
        "input": [int(height), int(height), int(channels)],
        "machine": harness.machine(),
        "versions": metadata["versions"],
        "artefacts": {
            name: {"file": info["path"], "size_bytes": info["size_bytes"], "weights": info["weights"],
                   "max_abs_diff": max(verification["max_abs_diff"][name].values()),
                   "relative_error": max(verification["relative_error"][name].values())}
            for name, info in metadata["formats"].items()
        },
        "paths": {},
    }
    for batch in args.batches:
        images = _images(batch, height, channels)
        call = lambda name: harness.timings(lambda: paths[name](images), repeats=1, warmup=0)  # noqa: E731
        # two warm-up rounds (tracing, first-call allocations), then one timed call per path and round
        for name, values in harness.interleaved(call, paths, args.repeats, warmup_rounds=2).items():
            median = statistics.median(values)
            result["paths"].setdefault(name, {})[f"batch_{batch}"] = {
                "median_ms": round(1000 * median, 3),
                "images_per_s": round(batch / median, 1),
            }
    for batch in args.batches:
        key = f"batch_{batch}"
        result[f"time_over_keras_{key}"] = {
            name: round(result["paths"][name][key]["median_ms"] / result["paths"]["keras"][key]["median_ms"], 3)
            for name in paths if name != "keras"
        }
    rows = []
    for name in paths:
        timing, artefact = result["paths"][name], result["artefacts"].get(name)
        rows.append([name, *(f"{timing[f'batch_{b}']['median_ms']:.2f} ({timing[f'batch_{b}']['images_per_s']:.0f})"
                             for b in args.batches),
                     f"{artefact['size_bytes'] / 1e6:.3f} MB" if artefact else "-",
                     f"{artefact['relative_error']:.1e}" if artefact else "-"])
    harness.report(result, None, ["path", *(f"batch {b}: ms (img/s)" for b in args.batches), "size on disk",
                                  "max rel. error vs Keras"], rows, args.json)


def _images(batch, size, channels):
    return np.random.default_rng(batch).integers(0, 256, size=(batch, size, size, channels), dtype=np.uint8)


if __name__ == "__main__":
    main()
