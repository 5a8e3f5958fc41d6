"""What the non-finite guard costs per training step: each method's AMCL model with the guard (the default)
and without it (`skip_nonfinite_steps = False`: no checks, no snapshot), same weights, same fixed batch, in
alternating rounds in one process so that machine noise hits both alike. Also reports how much state the
guard copies per step (`forward_state()`) against all the non-trainable state it copied before it was trimmed.

    python -m benchmarks.guard_cost                                     # the demo's size, every method
    python -m benchmarks.guard_cost --encoder resnet18_cifar --image-size 32 --channels 3 --methods moco

Prints JSON and a table; `--json PATH` writes the JSON too.
"""

import argparse
import statistics

import keras
import numpy as np
import tensorflow as tf

from benchmarks import harness


def _state_bytes(model):
    size = lambda variables: sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables)  # noqa: E731
    return {"copied_per_step": size(model.forward_state()), "all_non_trainable": size(model.non_trainable_variables)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_methods_option(parser, ["all"])
    harness.add_model_options(parser, encoder="small_convnet", image_size=28, channels=1, batch=256, width=32,
                              width_help="encoder width (the demo: 32)")
    harness.add_rounds_options(parser, steps=5, rounds=4)
    harness.add_json_option(parser)
    args = parser.parse_args()

    shape = (args.image_size, args.image_size, args.channels)
    dataset = harness.synthetic_views(args.batch, shape)
    result = {"benchmark": "guard_cost", "encoder": args.encoder, "width": args.width, "batch_pairs": args.batch,
              "image_shape": list(shape), "jit_compile": args.jit, "steps_per_round": args.steps,
              "rounds": args.rounds, "machine": harness.machine(), "versions": harness.versions(), "methods": {}}
    for method in harness.selected_methods(args.methods):
        keras.utils.set_random_seed(0)
        guarded, unguarded = (harness.build_model(method, True, args.batch, args.encoder, shape, width=args.width,
                                                  projection_dim=args.projection_dim, hidden_dim=args.hidden_dim,
                                                  jit=args.jit)[0] for _ in range(2))
        unguarded.set_weights(guarded.get_weights())
        unguarded.skip_nonfinite_steps = False  # before its train function is traced
        times = harness.time_steps({"guarded": guarded, "unguarded": unguarded}, dataset, args.steps, args.rounds,
                                   alternate=True)
        medians = {name: statistics.median(values) for name, values in times.items()}
        result["methods"][method] = {
            **{f"{name}_median_step_s": round(value, 5) for name, value in medians.items()},
            "guard_cost_ms": round(1000 * (medians["guarded"] - medians["unguarded"]), 2),
            "guarded_over_unguarded": round(medians["guarded"] / medians["unguarded"], 4),
            "state_bytes": _state_bytes(guarded),
            "steps_timed": len(times["guarded"]),
        }
    harness.report(
        result, f"{args.encoder} (width {args.width}), batch {args.batch} pairs, {shape}, jit={args.jit}; AMCL, 3 heads",
        ["method", "guarded step (s)", "unguarded step (s)", "guard cost (ms)", "ratio",
         "state copied / all non-trainable (bytes)"],
        [[method, f"{e['guarded_median_step_s']:.4f}", f"{e['unguarded_median_step_s']:.4f}", f"{e['guard_cost_ms']:+.2f}",
          f"{e['guarded_over_unguarded']:.3f}",
          f"{e['state_bytes']['copied_per_step']:,} / {e['state_bytes']['all_non_trainable']:,}"]
         for method, e in result["methods"].items()],
        args.json)


if __name__ == "__main__":
    main()
