"""Training-step time of SimCLR (1 head, fixed τ) vs AMCL-SimCLR (3 heads) on the same encoder.

Both models train on the same fixed batch of random images (augmentation excluded), in the
same process, in alternating rounds so that machine noise hits both alike. Prints JSON and
a table; the AMCL overhead is the ratio of the median step times.

    python -m benchmarks.step_time                                  # ResNet-18, batch 256 (slow on CPU)
    python -m benchmarks.step_time --encoder small_convnet --image-size 28 --channels 1
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import amcl_keras as amcl  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def build(variant, args):
    encoder = amcl.encoders.get(args.encoder, (args.image_size, args.image_size, args.channels), width=args.width)
    if variant == "simclr":
        model = amcl.SimCLR(encoder, num_heads=1, amcl=False, projection_dim=128, hidden_dim=512)
    else:
        model = amcl.SimCLR(encoder, num_heads=3, amcl=True, projection_dim=128, hidden_dim=512)
    model.compile(
        optimizer=keras.optimizers.SGD(0.06, momentum=0.9, weight_decay=5e-4, global_clipnorm=1.0),
        jit_compile=args.jit,
    )
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18_cifar")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="pairs per step")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round and model")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (after one warm-up round)")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, args.channels)
    views = (rng.uniform(size=shape).astype("float32"), rng.uniform(size=shape).astype("float32"))
    dataset = tf.data.Dataset.from_tensors(views).repeat()
    keras.utils.set_random_seed(0)
    models = {name: build(name, args) for name in ("simclr", "amcl_simclr")}
    times = {name: [] for name in models}
    for round_index in range(args.rounds + 1):
        for name, model in models.items():
            timer = StepTimer()
            model.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[timer])
            if round_index > 0:  # round 0 compiles and warms up
                times[name].extend(timer.times)
    result = {
        "benchmark": "step_time",
        "encoder": args.encoder,
        "batch_pairs": args.batch,
        "image_shape": list(shape[1:]),
        "jit_compile": args.jit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpus": len(tf.config.list_logical_devices("GPU"))},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    for name, values in times.items():
        median = statistics.median(values)
        result[name] = {
            "median_step_s": round(median, 4),
            "images_per_s": round(2 * args.batch / median, 2),
            "steps_timed": len(values),
        }
    result["amcl_over_baseline"] = round(result["amcl_simclr"]["median_step_s"] / result["simclr"]["median_step_s"], 4)
    print(json.dumps(result, indent=2))
    print()
    print(f"| model | median step (s) | images/s |  ({args.encoder}, batch {args.batch} pairs, jit={args.jit})")
    print("|---|---|---|")
    for name in ("simclr", "amcl_simclr"):
        print(f"| {name} | {result[name]['median_step_s']:.3f} | {result[name]['images_per_s']:.1f} |")
    print(f"AMCL / baseline step time: {result['amcl_over_baseline']:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
