"""The adaptive temperatures step by step: how fast τ⁺ and τ⁻ reach τ_min (docs/METHOD.md §8).

Trains AMCL-SimCLR (small_convnet width 32, 3 heads, d' = 128, `AMCLNTXentLoss` defaults:
β = 1e-4, top-100 negatives, τ ∈ [1e-5, 2]) on the shipped Fashion-MNIST subset, batch 256,
SGD 0.06, momentum 0.9, global clipnorm 1.0, no weight decay, for `--steps` steps (one step per
Keras epoch, so each logged loss is that step's loss). Before training and after every step it
records, on ONE fixed batch of two views (`model.pair_statistics`, inference mode), per head the
10th/50th/90th percentiles of τ⁺ (the 256 positive pairs) and τ⁻ (the 256·255 negative pairs)
and the median cosine of each kind. Writes `<out>.json` and `<out>.png` (log-scale τ per step,
τ_min marked) and prints a table and the steps at which the temperatures reach the floor.

    python -m benchmarks.tau_curve                              # the authors' form -> docs/tau_curve.*
    python -m benchmarks.tau_curve --objective NAME             # AMCLNTXentLoss(..., objective=NAME),
                                                                #   -> docs/tau_curve_NAME.*
    python -m benchmarks.tau_curve --objective NAME --compare docs/tau_curve.json   # both in one figure

About 1 min on 2 CPU cores for the default 100 steps (with these settings τ stays near 1
for the first ~50 steps and reaches τ_min at steps 60–70; 40 steps would not show it).
"""

import argparse
import inspect
import json
import pathlib
import sys
import time

from benchmarks import harness

FLOOR_TOLERANCES = (0.01, 0.1)  # "at the floor": τ ≤ τ_min · (1 + tolerance)


def _loss(objective):
    import amcl_keras as amcl

    if objective is None:
        return amcl.losses.AMCLNTXentLoss(128, objective="authors")  # the paper's form: its τ curve
    if "objective" not in inspect.signature(amcl.losses.AMCLNTXentLoss).parameters:
        sys.exit("amcl_keras.losses.AMCLNTXentLoss has no `objective` argument in this version; run without --objective.")
    return amcl.losses.AMCLNTXentLoss(128, objective=objective)


def _percentiles(values):
    import numpy as np

    p10, p50, p90 = np.percentile(np.asarray(values, np.float64).ravel(), [10, 50, 90])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90)}


def record(args):
    import keras
    import numpy as np

    import amcl_keras as amcl

    keras.utils.set_random_seed(args.seed)
    augmenter = amcl.augment.view_augmenter(28, 1)  # the default preset: SimCLR's five families
    views = amcl.data.pretraining_views(amcl.data.load("fashion_mnist_subset"), 256, augmenter, seed=args.seed)
    view1, view2 = next(iter(views))  # the fixed batch every measurement uses
    model = amcl.SimCLR(amcl.encoders.small_convnet((28, 28, 1), width=32), loss=_loss(args.objective))
    model.compile(optimizer=keras.optimizers.SGD(0.06, momentum=0.9, global_clipnorm=1.0))
    temperature = model.contrastive_loss.temperature
    steps = []

    def measure(step, loss):
        stats = model.pair_statistics(view1, view2)
        heads = []
        for c in range(stats["tau_pos"].shape[0]):
            heads.append({
                "tau_pos": _percentiles(stats["tau_pos"][c]), "tau_neg": _percentiles(stats["tau_neg"][c]),
                "sim_pos_p50": float(np.median(stats["sim_pos"][c])), "sim_neg_p50": float(np.median(stats["sim_neg"][c])),
            })
        steps.append({"step": step, "loss": loss, "heads": heads})

    class PerStep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            measure(epoch + 1, float(logs["loss"]))

    measure(0, None)
    started = time.perf_counter()
    model.fit(views.repeat(), epochs=args.steps, steps_per_epoch=1, verbose=0, callbacks=[PerStep()])
    return {
        "benchmark": "tau_curve",
        "objective": args.objective or "authors (AMCLNTXentLoss default)",
        "setup": "AMCL-SimCLR, small_convnet width 32, 3 heads, d'=128, beta=1e-4, top-100 negatives, "
                 "fashion_mnist_subset, batch 256, SGD 0.06 m0.9 global_clipnorm 1.0, no weight decay, "
                 "one fixed batch of two views for the statistics (inference mode)",
        "encoder_forward": getattr(model, "encoder_forward", "concatenated"),  # the model's default here
        "temperature_min": temperature.temperature_min,
        "temperature_max": temperature.temperature_max,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": harness.machine(),
        "versions": harness.versions(),
        "steps": steps,
    }


def floor_steps(result):
    """Per head: the first step at which the median / 90th percentile of τ⁺ and τ⁻ is within 1%
    (and within 10%, the margin `TemperatureSaturationWarning` uses) of τ_min; None: never."""
    out = []
    for c in range(len(result["steps"][0]["heads"])):
        head = {}
        for tolerance in FLOOR_TOLERANCES:
            limit = result["temperature_min"] * (1 + tolerance)
            head[f"{tolerance:.0%}"] = {
                f"{kind}_{q}": next((s["step"] for s in result["steps"] if s["heads"][c][kind][q] <= limit), None)
                for kind in ("tau_pos", "tau_neg") for q in ("p50", "p90")
            }
        out.append(head)
    return out


def table(result):
    heads = len(result["steps"][0]["heads"])
    lines = [f"{result['objective']}: median τ⁺ / τ⁻ per head on the fixed batch (τ_min = {result['temperature_min']:g})",
             f"{'step':>4}  {'loss':>11}  " + "  ".join(f"{f'head {c} τ⁺':>10} {'τ⁻':>9}" for c in range(heads))]
    for s in result["steps"]:
        loss = "—" if s["loss"] is None else f"{s['loss']:.4g}"
        lines.append(f"{s['step']:>4}  {loss:>11}  " + "  ".join(
            f"{h['tau_pos']['p50']:>10.3g} {h['tau_neg']['p50']:>9.3g}" for h in s["heads"]))
    for c, head in enumerate(result["floor_steps"]):
        for tolerance, first in head.items():
            lines.append(f"head {c}: first step within {tolerance} of τ_min — median τ⁺ {first['tau_pos_p50']}, "
                         f"90th pct τ⁺ {first['tau_pos_p90']}, median τ⁻ {first['tau_neg_p50']}, "
                         f"90th pct τ⁻ {first['tau_neg_p90']}")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(results), figsize=(6.5 * len(results), 8), squeeze=False, sharex="col")
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for column, result in enumerate(results):
        tau_ax, loss_ax = axes[0, column], axes[1, column]
        step = [s["step"] for s in result["steps"]]
        for c in range(len(result["steps"][0]["heads"])):
            colour = colours[c % len(colours)]
            for kind, style, label in (("tau_pos", "-", "τ⁺"), ("tau_neg", "--", "τ⁻")):
                get = lambda q: [s["heads"][c][kind][q] for s in result["steps"]]  # noqa: E731
                tau_ax.plot(step, get("p50"), style, color=colour, label=f"head {c} {label} median")
                tau_ax.fill_between(step, get("p10"), get("p90"), color=colour, alpha=0.12 if kind == "tau_pos" else 0.06)
        tau_ax.axhline(result["temperature_min"], color="black", lw=1, ls=":", label=f"τ_min = {result['temperature_min']:g}")
        tau_ax.set(yscale="log", ylabel="temperature (median; band 10th–90th pct)",
                   title=f"{result['objective']}: τ on one fixed batch")
        tau_ax.legend(fontsize=7, ncol=2)
        losses = [(s["step"], s["loss"]) for s in result["steps"] if s["loss"] is not None]
        loss_ax.plot([x for x, _ in losses], [y for _, y in losses], color="black")
        loss_ax.set(yscale="symlog", xlabel="training step", ylabel="training loss (symlog)", title="loss of each step")
        loss_ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--objective", default=None,
                        help="passed as AMCLNTXentLoss(..., objective=NAME) when that argument exists")
    parser.add_argument("--out", default=None, help="output stem (default docs/tau_curve[_NAME])")
    parser.add_argument("--compare", action="append", default=[], help="a saved <out>.json to draw beside this run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stem = pathlib.Path(args.out or ("docs/tau_curve" + (f"_{args.objective}" if args.objective else "")))
    stem.parent.mkdir(parents=True, exist_ok=True)

    result = record(args)
    result["floor_steps"] = floor_steps(result)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    others = [json.loads(pathlib.Path(p).read_text()) for p in args.compare]
    plot(others + [result], stem.with_suffix(".png"))
    print(table(result))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")


if __name__ == "__main__":
    main()
