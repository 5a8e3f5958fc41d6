"""Training-step time of each method's baseline (1 head, AMCL off) vs its AMCL variant (3 heads).

For every method asked for, both models train on the same fixed batch of random images
(augmentation excluded), in the same process, in alternating rounds so that machine noise hits
both alike. Prints JSON and a table; the AMCL overhead is the ratio of the median step times.

    python -m benchmarks.step_time                                  # SimCLR, ResNet-18, batch 256 (slow on CPU)
    python -m benchmarks.step_time --methods all --encoder small_convnet --image-size 28 --channels 1
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


METHODS = ("simclr", "moco", "barlow_twins", "simsiam")


def build(method, amcl_on, args):
    encoder = amcl.encoders.get(args.encoder, (args.image_size, args.image_size, args.channels), width=args.width)
    config = amcl.config.load(None, [
        f"model.method={method}", f"model.amcl={str(amcl_on).lower()}", f"model.num_heads={3 if amcl_on else 1}",
        f"data.batch_size={args.batch}", *([f"model.queue_size={max(4096, 2 * args.batch)}"] if method == "moco" else []),
        *([f"model.projection_dim={args.projection_dim}"] if args.projection_dim else []),
        *([f"model.hidden_dim={args.hidden_dim}"] if args.hidden_dim else []),
    ])
    model = amcl.methods.get(method).from_model_config(encoder, config.model, args.batch)
    model.compile(
        optimizer=keras.optimizers.SGD(0.06, momentum=0.9, weight_decay=5e-4, global_clipnorm=1.0),
        jit_compile=args.jit,
    )
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["simclr"], help=f"any of {METHODS}, or all")
    parser.add_argument("--projection-dim", type=int, help="override the methods' head output size")
    parser.add_argument("--hidden-dim", type=int, help="override the methods' head width")
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
    methods = METHODS if args.methods == ["all"] else tuple(args.methods)
    result = {
        "benchmark": "step_time",
        "encoder": args.encoder,
        "batch_pairs": args.batch,
        "image_shape": list(shape[1:]),
        "jit_compile": args.jit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpus": len(tf.config.list_logical_devices("GPU"))},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "methods": {},
    }
    for method in methods:
        keras.utils.set_random_seed(0)
        models = {"baseline": build(method, False, args), "amcl": build(method, True, args)}
        times = {name: [] for name in models}
        for round_index in range(args.rounds + 1):
            for name, model in models.items():
                timer = StepTimer()
                model.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[timer])
                if round_index > 0:  # round 0 compiles and warms up
                    times[name].extend(timer.times)
        entry = {}
        for name, values in times.items():
            median = statistics.median(values)
            entry[name] = {"median_step_s": round(median, 4), "images_per_s": round(2 * args.batch / median, 2),
                           "steps_timed": len(values)}
        entry["amcl_over_baseline"] = round(entry["amcl"]["median_step_s"] / entry["baseline"]["median_step_s"], 4)
        result["methods"][method] = entry
    print(json.dumps(result, indent=2))
    print()
    print(f"{args.encoder}, batch {args.batch} pairs, jit={args.jit}; baseline = 1 head, AMCL = 3 heads")
    print("| method | baseline step (s) | AMCL step (s) | AMCL / baseline |")
    print("|---|---|---|---|")
    for method, entry in result["methods"].items():
        print(f"| {method} | {entry['baseline']['median_step_s']:.3f} | {entry['amcl']['median_step_s']:.3f} "
              f"| {entry['amcl_over_baseline']:.3f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
