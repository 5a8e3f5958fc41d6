"""Does AMCL beat its baseline? Baseline vs AMCL as the authors wrote it vs bounded AMCL, over seeds.

For every method × augmentation preset × seed, one run per ARM with identical data, encoder,
steps, optimizer and evaluation: `baseline` (1 head, its fixed temperature / plain loss),
`authors` (3 heads, adaptive temperatures, the authors' objective and defaults), `bounded`
(3 heads, the bounded objective chosen on the validation split, `BOUNDED` below), and the
candidate arms used for that choice (`normalized`, `rectified`, ... see `ARMS`). Each run is an
ordinary `amcl train` run directory under `--out/runs/`; finished runs are kept, so re-running
the command after an interruption only does what is missing. Writes `--out/results.json`,
`--out/table.md` (mean ± std over seeds, the paired per-seed difference to the baseline, and the
temperatures at the end) and `--out/report.png` (the paired differences at a glance).

`--validation` carves a validation split out of the TRAINING images only (pre-training and the
kNN/probe bank on the first 50,000, scored on the last 10,000): that is where the bounded
objective and its β were chosen. The test split is never used with `--validation`.

Data: the full Fashion-MNIST (60,000 / 10,000) from the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`) when it is installed, else the shipped 5,000 / 1,000
subset. Nothing is downloaded.

    python -m benchmarks.reproduce                      # the README study (hours on 2 CPU cores)
    python -m benchmarks.reproduce --validation --methods simclr --seeds 0 \
        --arms baseline authors normalized rectified normalized-beta1e-2 rectified-beta1e-2
    python -m benchmarks.reproduce --quick              # one seed, a few steps: checks the pipeline
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from amcl_keras import data, registry  # noqa: E402

DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
DISPLAY = {name: registry.method(name).display_name for name in registry.names()}  # "barlow_twins" → "Barlow Twins"
VALIDATION_SIZE = 10_000

# The bounded objective chosen on the validation split (see README "Reproduction" and docs/METHOD.md).
BOUNDED = ["model.objective=normalized"]

# arm name → (uses AMCL, extra config overrides)
ARMS = {
    "baseline": (False, []),
    "authors": (True, ["model.objective=authors"]),
    "bounded": (True, BOUNDED),
    "normalized": (True, ["model.objective=normalized"]),
    "rectified": (True, ["model.objective=rectified"]),
    "normalized-beta1e-2": (True, ["model.objective=normalized", "model.beta=0.01"]),
    "rectified-beta1e-2": (True, ["model.objective=rectified", "model.beta=0.01"]),
    "normalized-beta1": (True, ["model.objective=normalized", "model.beta=1.0"]),
    "normalized-tmin1e-2": (True, ["model.objective=normalized", "model.temperature_min=0.01"]),
    "normalized-center1": (True, ["model.objective=normalized", "model.temperature_center=1.0"]),
    "normalized-center1-tmin1e-2": (True, ["model.objective=normalized", "model.temperature_center=1.0",
                                           "model.temperature_min=0.01"]),
}


def dataset_for(choice, out, validation=False):
    """The `data.dataset` value: a .npz of the full Fashion-MNIST (with `validation`: its training
    images split into `train` = the first 50,000 and `val` = the last 10,000), or the shipped subset."""
    available = (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()
    if choice == "subset" or (choice == "auto" and not available):
        if validation:
            sys.exit("--validation needs the full Fashion-MNIST (apt-get install dataset-fashion-mnist).")
        return "fashion_mnist_subset", "Fashion-MNIST subset shipped with amcl_keras (5,000 train / 1,000 test)"
    if not available:
        sys.exit(f"--data full needs {DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist).")
    path = out / ("fashion_mnist_validation.npz" if validation else "fashion_mnist_full.npz")
    if not path.is_file():
        read = lambda name: data.read_idx(DEBIAN_FASHION_MNIST / name)  # noqa: E731
        images, labels = read("train-images-idx3-ubyte.gz")[..., None], read("train-labels-idx1-ubyte.gz").astype(np.int64)
        if validation:  # the test split is not touched
            cut = len(images) - VALIDATION_SIZE
            arrays = {"train_images": images[:cut], "train_labels": labels[:cut],
                      "val_images": images[cut:], "val_labels": labels[cut:]}
        else:
            arrays = {"train_images": images, "train_labels": labels,
                      "test_images": read("t10k-images-idx3-ubyte.gz")[..., None],
                      "test_labels": read("t10k-labels-idx1-ubyte.gz").astype(np.int64)}
        np.savez(path, **arrays)
    if validation:
        return str(path), ("Fashion-MNIST training images only: pre-training and bank on the first 50,000, "
                           "scored on the last 10,000 (validation split; test split unused)")
    return str(path), "Fashion-MNIST, full (60,000 train / 10,000 test, Debian dataset-fashion-mnist)"


def overrides(args, dataset, method, arm, preset, seed):
    amcl_on, extra = ARMS[arm]
    return [
        f"data.dataset={dataset}", f"data.augmentation={preset}", f"data.batch_size={args.batch}",
        f"model.method={method}", f"model.amcl={str(amcl_on).lower()}", f"model.num_heads={3 if amcl_on else 1}",
        f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}", f"train.seed={seed}",
        "train.strategy=default", f"eval.probe_epochs={args.probe_epochs}", f"eval.max_examples={args.eval_examples}",
        "eval.random_init=false", "export.formats=[]", "eval.online_probe_every=0", "eval.tensorboard=false",
        *(["data.eval_test_split=val"] if args.validation else []),
        *(extra if amcl_on else []),
    ]


def final_temperatures(run_dir):
    """τ⁺ / τ⁻ at the end of a run, from the last epoch's telemetry: per head (mean, p10, p50, p90)
    over the pairs of one fixed batch, and their median / spread over heads."""
    path = pathlib.Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    telemetry = lines[-1].get("telemetry") if lines else None
    if not telemetry:
        return None
    out = {}
    for name in ("tau_pos", "tau_neg"):
        heads = telemetry.get(name)
        if heads:
            out[name] = {
                "heads": heads,
                "p50": float(np.median([h["p50"] for h in heads.values()])),
                "p10": float(min(h["p10"] for h in heads.values())),
                "p90": float(max(h["p90"] for h in heads.values())),
            }
    return out or None


def mean_std(values):
    values = [100 * v for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), spread


def _format_tau(tau):
    if not tau:
        return "–"
    parts = []
    for name, label in (("tau_pos", "τ⁺"), ("tau_neg", "τ⁻")):
        if name in tau:
            t = tau[name]
            parts.append(f"{label} {t['p50']:.2g} [{t['p10']:.2g}–{t['p90']:.2g}]")
    return ", ".join(parts)


def summarize(records, cells, arms, seeds):
    """Per cell × arm: mean ± std of probe and kNN, the paired per-seed difference to the baseline,
    and the end temperatures (median over seeds of the median over heads; spread = widest p10–p90)."""
    rows = []
    for method, preset in cells:
        base = {r["seed"]: r for r in records if (r["method"], r["preset"], r["arm"]) == (method, preset, "baseline")}
        for arm in arms:
            runs = [r for r in records if (r["method"], r["preset"], r["arm"]) == (method, preset, arm)]
            if not runs:
                continue
            row = {"method": method, "preset": preset, "arm": arm, "seeds": [r["seed"] for r in runs]}
            for key in ("linear_probe", "knn"):
                row[key] = mean_std([r[key] for r in runs])
                paired = [r[key] - base[r["seed"]][key] for r in runs if r["seed"] in base]
                row[f"delta_{key}"] = mean_std(paired) if paired and arm != "baseline" else None
                row[f"delta_{key}_per_seed"] = [round(100 * d, 2) for d in paired] if arm != "baseline" else None
            taus = [r["temperatures"] for r in runs if r.get("temperatures")]
            if taus:
                row["temperatures"] = {
                    name: {"p50": float(np.median([t[name]["p50"] for t in taus])),
                           "p10": float(min(t[name]["p10"] for t in taus)),
                           "p90": float(max(t[name]["p90"] for t in taus))}
                    for name in ("tau_pos", "tau_neg") if all(name in t for t in taus)
                }
            rows.append(row)
    return rows


def table(rows, args, data_name):
    """Markdown: one row per method × preset × arm."""
    split = "the validation split (last 10,000 training images)" if args.validation else "the test split"
    lines = [
        f"Data: {data_name}. Budget per run: {args.epochs} epochs × {args.steps} steps of batch {args.batch} "
        f"({args.epochs * args.steps * args.batch:,} pairs), small_convnet (width 32), the method's SGD + cosine, "
        f"clipnorm 1.0. Arms: baseline = 1 head, fixed τ (SimCLR 0.5, MoCo 0.1) / plain loss; authors = 3 heads, "
        f"adaptive τ, the authors' objective and defaults; bounded = 3 heads, adaptive τ, {' '.join(BOUNDED)}; "
        f"other arms: candidates for that choice. Seeds: {', '.join(map(str, args.seeds))}.",
        "",
        f"Protocols — **linear probe**: softmax on standardised frozen features, Adam 1e-2, {args.probe_epochs} epochs, "
        f"trained on the first {args.eval_examples:,} training images, scored on {split}; **kNN**: cosine, k = 200, "
        "T = 0.1, weighted votes, same bank. Accuracy in %, mean ± std over seeds; Δ = the paired per-seed "
        "difference to the baseline (mean ± std); τ at the end: median over pairs of one fixed batch "
        "[widest 10th–90th percentile over heads and seeds].",
        "",
        "| method | aug. | arm | probe | kNN | Δ probe | Δ kNN | τ at the end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        several = len(row["seeds"]) > 1  # one seed: no spread to show
        cell = lambda ms: f"{ms[0]:.1f} ± {ms[1]:.1f}" if several else f"{ms[0]:.1f}"  # noqa: E731
        delta = lambda ms: "–" if ms is None else (f"{ms[0]:+.1f} ± {ms[1]:.1f}" if several else f"{ms[0]:+.1f}")  # noqa: E731
        lines.append(
            f"| {DISPLAY[row['method']]} | {row['preset']} | {row['arm']} | {cell(row['linear_probe'])} | {cell(row['knn'])} "
            f"| {delta(row['delta_linear_probe'])} | {delta(row['delta_knn'])} | {_format_tau(row.get('temperatures'))} |"
        )
    return "\n".join(lines) + "\n"


def figure(rows, path):
    """The paired differences to the baseline at a glance: one bar per cell × arm (mean ± std over
    seeds, the seeds as dots), probe and kNN side by side, and the end temperatures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in dict.fromkeys(r["arm"] for r in rows) if a != "baseline"]
    cells = list(dict.fromkeys((r["method"], r["preset"]) for r in rows))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 3, figsize=(17, 0.9 * len(cells) + 2.6), gridspec_kw={"width_ratios": [1, 1, 1]})
    height = 0.8 / max(len(arms), 1)
    for panel, key in zip(axes[:2], ("linear_probe", "knn")):
        for a, arm in enumerate(arms):
            for c, cell in enumerate(cells):
                row = next((r for r in rows if (r["method"], r["preset"], r["arm"]) == (*cell, arm)), None)
                if row is None or row[f"delta_{key}"] is None:
                    continue
                y = c + (a - (len(arms) - 1) / 2) * height
                mean, std = row[f"delta_{key}"]
                panel.barh(y, mean, height * 0.9, xerr=std, color=colours(a), label=arm if c == 0 else None,
                           capsize=2)
                panel.plot(row[f"delta_{key}_per_seed"], [y] * len(row[f"delta_{key}_per_seed"]), "k.", ms=3)
        panel.axvline(0, color="black", lw=0.8)
        panel.set_yticks(range(len(cells)), [f"{DISPLAY[m]} ({p})" for m, p in cells])
        panel.invert_yaxis()
        panel.set_xlabel(f"Δ {'linear probe' if key == 'linear_probe' else 'kNN'} accuracy vs baseline (points, paired per seed)")
        panel.grid(axis="x", alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    panel = axes[2]
    for a, arm in enumerate(arms):
        for c, cell in enumerate(cells):
            row = next((r for r in rows if (r["method"], r["preset"], r["arm"]) == (*cell, arm)), None)
            taus = row and row.get("temperatures")
            if not taus:
                continue
            y = c + (a - (len(arms) - 1) / 2) * height
            for name, marker in (("tau_pos", "o"), ("tau_neg", "s")):
                if name in taus:
                    t = taus[name]
                    panel.plot([t["p10"], t["p90"]], [y, y], color=colours(a), lw=1)
                    panel.plot(t["p50"], y, marker, color=colours(a), ms=4, mfc="white" if name == "tau_neg" else None)
    panel.set_xscale("log")
    panel.set_yticks(range(len(cells)), [""] * len(cells))
    panel.invert_yaxis()
    panel.set_xlabel("τ at the end: ● τ⁺  □ τ⁻ (median, line = 10th–90th pct.)")
    panel.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+",
                        default=["simclr:abcde", "moco:abcde", "barlow_twins:abcde", "simsiam:abcde", "simclr:a"],
                        help="method:preset pairs")
    parser.add_argument("--methods", nargs="+", choices=sorted(DISPLAY), help="shortcut: these methods × --presets")
    parser.add_argument("--presets", nargs="+", default=["abcde"])
    parser.add_argument("--arms", nargs="+", default=["baseline", "authors", "bounded"], choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--eval-examples", type=int, default=10000)
    parser.add_argument("--data", choices=("auto", "full", "subset"), default="auto")
    parser.add_argument("--validation", action="store_true", help="score on a split of the training images")
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--quick", action="store_true", help="one seed, 1 epoch of 3 steps, short probe")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.steps, args.probe_epochs, args.eval_examples = args.seeds[:1], 1, 3, 2, 1000
    cells = [tuple(c.split(":")) for c in args.cells] if not args.methods else \
        [(m, p) for m in args.methods for p in args.presets]
    for method, _ in cells:
        if method not in DISPLAY:
            parser.error(f"unknown method {method!r} in --cells; choose from {sorted(DISPLAY)}")
    if args.out is None:
        args.out = pathlib.Path("benchmarks/results/" + ("validation" if args.validation else "reproduce"))

    from amcl_keras import config as config_lib, train

    args.out.mkdir(parents=True, exist_ok=True)
    dataset, data_name = dataset_for(args.data, args.out, args.validation)
    plan = [(m, p, s, a) for m, p in cells for s in args.seeds for a in args.arms]
    records, started = [], time.perf_counter()
    for index, (method, preset, seed, arm) in enumerate(plan, 1):
        run_dir = args.out / "runs" / f"{method}-{arm}-{preset}-seed{seed}"
        results_path = run_dir / "results.json"
        if results_path.is_file():  # finished earlier: keep it
            results = json.loads(results_path.read_text())
        else:
            config = config_lib.load(None, overrides(args, dataset, method, arm, preset, seed))
            results = train.run(config, run_dir, overwrite=True, verbose=0)
        record = {
            "method": method, "preset": preset, "seed": seed, "arm": arm, "run_dir": str(run_dir),
            "linear_probe": results["trained"]["linear_probe"], "knn": results["trained"]["knn"],
            "seconds": results["seconds"], "temperatures": final_temperatures(run_dir),
        }
        records.append(record)
        print(
            f"[{index}/{len(plan)}] {DISPLAY[method]:<12} {arm:<20} preset {preset:<5} seed {seed}: "
            f"probe {100 * record['linear_probe']:.1f}%  kNN {100 * record['knn']:.1f}%  "
            f"{_format_tau(record['temperatures'])}  ({record['seconds']:.0f} s; "
            f"{time.perf_counter() - started:.0f} s elapsed)",
            flush=True,
        )

    rows = summarize(records, cells, args.arms, args.seeds)
    markdown = table(rows, args, data_name)
    command = "python -m benchmarks.reproduce " + " ".join(sys.argv[1:])
    (args.out / "table.md").write_text(f"Command: `{command.strip()}`\n\n{markdown}")
    summary = {
        "command": command.strip(), "data": data_name, "runs": records, "summary": rows,
        "seconds": round(time.perf_counter() - started, 1),  # this invocation (finished runs are reused)
        "run_seconds_total": round(sum(r["seconds"] for r in records), 1),  # every run's own time, summed
        "hardware": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
        "bounded": BOUNDED,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    figure(rows, args.out / "report.png")
    print(markdown)
    print(json.dumps({k: summary[k] for k in ("data", "seconds", "run_seconds_total")}))


if __name__ == "__main__":
    main()
