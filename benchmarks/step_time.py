"""Training-step time of each method's baseline (1 head, AMCL off) vs its AMCL variant (3 heads).

For every method asked for, both models train on the same fixed batch of random images
(augmentation excluded), in the same process, in alternating rounds so that machine noise hits
both alike. Prints JSON and a table; the AMCL overhead is the ratio of the median step times. Next to it, the ratio
of the two models' forward multiply-adds (every Conv2D and Dense they hold: encoder, heads, predictors, a momentum
encoder; the loss excluded) is the overhead a step would have if it cost only its layers' FLOPs: what extra heads
must cost, whatever the implementation.

    python -m benchmarks.step_time                                  # SimCLR, ResNet-18, batch 256 (slow on CPU)
    python -m benchmarks.step_time --methods all --encoder small_convnet --image-size 28 --channels 1
"""

import argparse
import statistics

import keras

from benchmarks import harness, train_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_methods_option(parser, [harness.DEFAULT_METHOD])
    harness.add_model_options(parser, encoder="resnet18_cifar", image_size=32, channels=3, batch=256, jit=True)
    harness.add_rounds_options(parser, steps=2, rounds=2)
    harness.add_json_option(parser)
    args = parser.parse_args()

    shape = (args.image_size, args.image_size, args.channels)
    dataset = harness.synthetic_views(args.batch, shape)
    result = {
        "benchmark": "step_time",
        "encoder": args.encoder,
        "batch_pairs": args.batch,
        "image_shape": list(shape),
        "jit_compile": args.jit,
        "machine": harness.machine(),
        "versions": harness.versions(),
        "methods": {},
    }
    for method in harness.selected_methods(args.methods):
        keras.utils.set_random_seed(0)
        models = {name: harness.build_model(method, amcl_on, args.batch, args.encoder, shape, width=args.width,
                                            projection_dim=args.projection_dim, hidden_dim=args.hidden_dim,
                                            jit=args.jit)[0]
                  for name, amcl_on in (("baseline", False), ("amcl", True))}
        entry = {}
        for name, values in harness.time_steps(models, dataset, args.steps, args.rounds).items():
            median = statistics.median(values)
            entry[name] = {"median_step_s": round(median, 4), "images_per_s": round(2 * args.batch / median, 2),
                           "steps_timed": len(values)}
        entry["amcl_over_baseline"] = round(entry["amcl"]["median_step_s"] / entry["baseline"]["median_step_s"], 4)
        entry["mac_ratio"] = round(train_step.forward_macs(models["amcl"]) / train_step.forward_macs(models["baseline"]), 4)
        result["methods"][method] = entry
    harness.report(
        result, f"{args.encoder}, batch {args.batch} pairs, jit={args.jit}; baseline = 1 head, AMCL = 3 heads",
        ["method", "baseline step (s)", "AMCL step (s)", "AMCL / baseline", "MAC ratio (layers only)"],
        [[method, f"{e['baseline']['median_step_s']:.3f}", f"{e['amcl']['median_step_s']:.3f}",
          f"{e['amcl_over_baseline']:.3f}", f"{e['mac_ratio']:.3f}"] for method, e in result["methods"].items()],
        args.json)


if __name__ == "__main__":
    main()
