"""What the non-finite guard costs per training step: each method's AMCL model with the guard (the default)
and without it (`skip_nonfinite_steps = False`: no checks, no snapshot), same weights, same fixed batch, in
alternating rounds in one process so that machine noise hits both alike. Also reports how much state the
guard copies per step (`forward_state()`) against all the non-trainable state it copied before it was trimmed.

    python -m benchmarks.guard_cost                                     # the demo's size, every method
    python -m benchmarks.guard_cost --encoder resnet18_cifar --image-size 32 --channels 3 --methods moco

Prints JSON and a table; `--json PATH` writes the JSON too.
"""

import argparse
import json
import os
import platform
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from amcl_keras import registry  # noqa: E402
from benchmarks.step_time import StepTimer, build  # noqa: E402


def _state_bytes(model):
    size = lambda variables: sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables)  # noqa: E731
    return {"copied_per_step": size(model.forward_state()), "all_non_trainable": size(model.non_trainable_variables)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["all"], help=f"any of {registry.names()}, or all")
    parser.add_argument("--encoder", default="small_convnet")
    parser.add_argument("--width", type=int, default=32, help="encoder width (the demo: 32)")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256, help="pairs per step (the demo: 256)")
    parser.add_argument("--projection-dim", type=int, default=None)
    parser.add_argument("--hidden-dim", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and model")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds (after one warm-up round)")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, args.channels)
    views = (rng.uniform(size=shape).astype("float32"), rng.uniform(size=shape).astype("float32"))
    dataset = tf.data.Dataset.from_tensors(views).repeat()
    methods = registry.names() if args.methods == ["all"] else args.methods
    result = {"benchmark": "guard_cost", "encoder": args.encoder, "width": args.width, "batch_pairs": args.batch,
              "image_shape": list(shape[1:]), "jit_compile": args.jit, "steps_per_round": args.steps,
              "rounds": args.rounds,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
                          "gpus": len(tf.config.list_logical_devices("GPU"))},
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}, "methods": {}}
    for method in methods:
        keras.utils.set_random_seed(0)
        guarded = build(method, True, args)
        unguarded = build(method, True, args)
        unguarded.set_weights(guarded.get_weights())
        unguarded.skip_nonfinite_steps = False  # before its train function is traced
        models = {"guarded": guarded, "unguarded": unguarded}
        times = {name: [] for name in models}
        for round_index in range(args.rounds + 1):
            order = list(models) if round_index % 2 == 0 else list(reversed(models))
            for name in order:
                timer = StepTimer()
                models[name].fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[timer])
                if round_index > 0:  # round 0 traces and warms up
                    times[name].extend(timer.times)
        medians = {name: statistics.median(values) for name, values in times.items()}
        result["methods"][method] = {
            **{f"{name}_median_step_s": round(value, 5) for name, value in medians.items()},
            "guard_cost_ms": round(1000 * (medians["guarded"] - medians["unguarded"]), 2),
            "guarded_over_unguarded": round(medians["guarded"] / medians["unguarded"], 4),
            "state_bytes": _state_bytes(guarded),
            "steps_timed": len(times["guarded"]),
        }
    print(json.dumps(result, indent=2))
    print(f"\n{args.encoder} (width {args.width}), batch {args.batch} pairs, {shape[1:]}, jit={args.jit}; AMCL, 3 heads")
    print("| method | guarded step (s) | unguarded step (s) | guard cost (ms) | ratio | state copied / all non-trainable (bytes) |")
    print("|---|---|---|---|---|---|")
    for method, entry in result["methods"].items():
        state = entry["state_bytes"]
        print(f"| {method} | {entry['guarded_median_step_s']:.4f} | {entry['unguarded_median_step_s']:.4f} "
              f"| {entry['guard_cost_ms']:+.2f} | {entry['guarded_over_unguarded']:.3f} "
              f"| {state['copied_per_step']:,} / {state['all_non_trainable']:,} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
