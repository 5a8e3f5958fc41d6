"""How large is each part of the first step's gradient? Encoder, heads and the temperature network φ, per arm of the
ablation (`benchmarks/ablation.py`, the same configs), on one batch of its data at initialisation.

Why: `train.clipnorm` clips ONE global norm over every weight (the authors' `clip_grad_norm_`). If φ's gradient is
far larger than the encoder's, clipping shrinks the encoder's step by the ratio — the step the plain baseline takes
is then not the step the AMCL arm takes. `model.temperature_clipping: separate` clips φ on its own.

    python -m benchmarks.gradient_norms --dataset tuxpaint_stamps --json benchmarks/results/gradient_norms_cpu2.json

Prints JSON and a table: per arm, the global norm of each group, the clip factor min(1, clipnorm / norm) the encoder
gets under "joint" and under "separate", and their ratio.
"""

import argparse
import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

def group_norms(model, batch):
    """{group: global gradient norm} of the loss on `batch`, groups encoder / heads / phi, as train_step computes it."""
    import tensorflow as tf

    view1, view2 = model._views(batch)
    with tf.GradientTape() as tape:
        _, z1, z2 = model.embed_views(view1, view2 if model.embeds_both_views else None)
        loss, _, _ = model.compute_loss_and_stats(z1, z2, (view1, view2))
    gradients = tape.gradient(loss, model.trainable_variables)
    temperature = getattr(model.contrastive_loss, "temperature", None)
    phi = {id(v) for v in temperature.trainable_variables} if hasattr(temperature, "trainable_variables") else set()
    encoder = {id(v) for v in model.encoder.trainable_variables}
    squares = {}
    for variable, gradient in zip(model.trainable_variables, gradients):
        if gradient is not None:
            group = "phi" if id(variable) in phi else "encoder" if id(variable) in encoder else "heads"
            squares[group] = squares.get(group, 0.0) + float(tf.reduce_sum(tf.square(gradient)))
    return float(loss), {group: value ** 0.5 for group, value in squares.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tuxpaint_stamps", help="tuxpaint_stamps (shipped) or fashion_mnist")
    parser.add_argument("--methods", nargs="+", help="default: every method of the ablation")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()

    from amcl_keras import config as config_lib, train
    from benchmarks import ablation

    class Budget:  # the ablation's own settings
        batch, epochs, steps, probe_epochs, eval_examples = 256, 4, 30, 20, 10000

    dataset, split = ablation.dataset_value(args.dataset, pathlib.Path("benchmarks/results/ablation") / args.dataset,
                                            validation=True)
    result = {"benchmark": "gradient_norms", "dataset": args.dataset, "batch_pairs": Budget.batch, "arms": []}
    for method in args.methods or ablation.METHODS:
        arms = ablation.validation_arms(method)  # every validation arm (those at the validated τ* excepted)
        for name in arms:
            config = config_lib.load(None, ablation.config_overrides(Budget, dataset, split, method, arms[name], 0))
            data = train.load_data(config)
            model = train.build_model(config, data.input_shape, data.augmenter)
            loss, norms = group_norms(model, next(iter(data.views)))
            clipnorm = config.train.clipnorm
            joint = min(1.0, clipnorm / sum(n * n for n in norms.values()) ** 0.5)
            separate = min(1.0, clipnorm / (norms["encoder"] ** 2 + norms["heads"] ** 2) ** 0.5)
            result["arms"].append({"method": method, "arm": name, "loss": round(loss, 4),
                                   "norms": {k: round(v, 4) for k, v in norms.items()},
                                   "encoder_clip_factor_joint": joint, "encoder_clip_factor_separate": separate,
                                   "separate_over_joint": round(separate / joint, 2)})
            print(json.dumps(result["arms"][-1]), flush=True)
    print(json.dumps(result, indent=2))
    print(f"\n{args.dataset}, one batch of {Budget.batch} pairs at initialisation, clipnorm {clipnorm}")
    print("| method | arm | encoder | heads | φ | encoder's clip factor, joint | separate | separate / joint |")
    print("|---|---|---|---|---|---|---|---|")
    for row in result["arms"]:
        n = row["norms"]
        print(f"| {row['method']} | {row['arm']} | {n['encoder']:.3g} | {n['heads']:.3g} | {n.get('phi', 0):.3g} "
              f"| {row['encoder_clip_factor_joint']:.2e} | {row['encoder_clip_factor_separate']:.2e} "
              f"| {row['separate_over_joint']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
