"""Does AMCL beat its baseline? AMCL vs the plain method at equal budget, over seeds.

For every method × augmentation preset × seed, two runs with identical data, encoder, steps,
optimizer and evaluation: the baseline (1 head, its fixed temperature / plain loss) and AMCL
(3 heads, adaptive temperatures, the authors' defaults). Each run is an ordinary `amcl train`
run directory under `--out/runs/`; finished runs are kept, so re-running the command after an
interruption only does what is missing. Writes `--out/results.json`, `--out/table.md`
(mean ± std over seeds, the protocol in the header) and `--out/report.png` (`amcl report` of
both variants of every method, first preset with several families, first seed).

Data: the full Fashion-MNIST (60,000 / 10,000) from the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`) when it is installed, else the shipped 5,000 / 1,000
subset. Nothing is downloaded.

    python -m benchmarks.reproduce                      # the README table: about an hour on 2 CPU cores
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

from amcl_keras import data  # noqa: E402

DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
DISPLAY = {"simclr": "SimCLR", "moco": "MoCo", "barlow_twins": "Barlow Twins", "simsiam": "SimSiam"}


def dataset_for(choice, out):
    """The `data.dataset` value: a .npz of the full Fashion-MNIST, or the shipped subset."""
    available = (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()
    if choice == "subset" or (choice == "auto" and not available):
        return "fashion_mnist_subset", "Fashion-MNIST subset shipped with amcl_keras (5,000 train / 1,000 test)"
    if not available:
        sys.exit(f"--data full needs {DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist).")
    path = out / "fashion_mnist_full.npz"
    if not path.is_file():
        arrays = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            arrays[f"{split}_images"] = data.read_idx(DEBIAN_FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz")[..., None]
            arrays[f"{split}_labels"] = data.read_idx(DEBIAN_FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        np.savez(path, **arrays)
    return str(path), "Fashion-MNIST, full (60,000 train / 10,000 test, Debian dataset-fashion-mnist)"


def overrides(args, dataset, method, amcl_on, preset, seed):
    return [
        f"data.dataset={dataset}", f"data.augmentation={preset}", f"data.batch_size={args.batch}",
        f"model.method={method}", f"model.amcl={str(amcl_on).lower()}", f"model.num_heads={3 if amcl_on else 1}",
        f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}", f"train.seed={seed}",
        "train.strategy=default", f"eval.probe_epochs={args.probe_epochs}", f"eval.max_examples={args.eval_examples}",
        "eval.random_init=false", "export.formats=[]",
    ]


def mean_std(values):
    values = [100 * v for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), spread


def table(records, args, data_name):
    """Markdown: one row per method × preset, baseline and AMCL side by side (mean ± std over seeds)."""
    lines = [
        f"Data: {data_name}. Budget per run: {args.epochs} epochs × {args.steps} steps of batch {args.batch} "
        f"({args.epochs * args.steps * args.batch:,} pairs), small_convnet (width 32), SGD + cosine, clipnorm 1.0. "
        f"Baseline: 1 head, fixed τ (SimCLR 0.5, MoCo 0.1) / plain loss; AMCL: 3 heads, adaptive τ (authors' defaults). "
        f"Seeds: {', '.join(map(str, args.seeds))}.",
        "",
        f"Protocols — **linear probe**: softmax on standardised frozen features, Adam 1e-2, {args.probe_epochs} epochs, "
        f"trained on the first {args.eval_examples:,} training images, tested on the test split; **kNN**: cosine, k = 200, "
        "T = 0.1, weighted votes, same bank. Accuracy in %, mean ± std over seeds.",
        "",
        "| method | augmentation | baseline probe | AMCL probe | Δ probe | baseline kNN | AMCL kNN | Δ kNN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in args.methods:
        for preset in args.presets:
            cells = {}
            for variant in ("baseline", "amcl"):
                runs = [r for r in records if (r["method"], r["preset"], r["variant"]) == (method, preset, variant)]
                cells[variant] = {key: [r[key] for r in runs] for key in ("linear_probe", "knn")}
            row = [DISPLAY[method], preset]
            for key in ("linear_probe", "knn"):
                base, amcl = mean_std(cells["baseline"][key]), mean_std(cells["amcl"][key])
                row += [f"{base[0]:.1f} ± {base[1]:.1f}", f"{amcl[0]:.1f} ± {amcl[1]:.1f}", f"{amcl[0] - base[0]:+.1f}"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["simclr", "moco", "barlow_twins"], choices=sorted(DISPLAY))
    parser.add_argument("--presets", nargs="+", default=["a", "abcde"], help="augmentation presets (1 and 5 families)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--eval-examples", type=int, default=10000)
    parser.add_argument("--data", choices=("auto", "full", "subset"), default="auto")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results/reproduce"))
    parser.add_argument("--quick", action="store_true", help="one seed, 1 epoch of 3 steps, short probe")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.steps, args.probe_epochs, args.eval_examples = args.seeds[:1], 1, 3, 2, 1000

    from amcl_keras import config as config_lib, report, train

    args.out.mkdir(parents=True, exist_ok=True)
    dataset, data_name = dataset_for(args.data, args.out)
    plan = [(m, p, s, v) for m in args.methods for p in args.presets for s in args.seeds for v in ("baseline", "amcl")]
    records, started = [], time.perf_counter()
    for index, (method, preset, seed, variant) in enumerate(plan, 1):
        run_dir = args.out / "runs" / f"{method}-{variant}-{preset}-seed{seed}"
        results_path = run_dir / "results.json"
        if results_path.is_file():  # finished earlier: keep it
            results = json.loads(results_path.read_text())
        else:
            config = config_lib.load(None, overrides(args, dataset, method, variant == "amcl", preset, seed))
            results = train.run(config, run_dir, overwrite=True, verbose=0)
        record = {
            "method": method, "preset": preset, "seed": seed, "variant": variant, "run_dir": str(run_dir),
            "linear_probe": results["trained"]["linear_probe"], "knn": results["trained"]["knn"],
            "seconds": results["seconds"],
        }
        records.append(record)
        print(
            f"[{index}/{len(plan)}] {DISPLAY[method]:<12} {variant:<8} preset {preset:<5} seed {seed}: "
            f"probe {100 * record['linear_probe']:.1f}%  kNN {100 * record['knn']:.1f}%  ({record['seconds']:.0f} s; "
            f"{time.perf_counter() - started:.0f} s elapsed)",
            flush=True,
        )

    markdown = table(records, args, data_name)
    command = "python -m benchmarks.reproduce " + " ".join(sys.argv[1:])
    (args.out / "table.md").write_text(f"Command: `{command.strip()}`\n\n{markdown}")
    summary = {
        "command": command.strip(), "data": data_name, "runs": records,
        "seconds": round(time.perf_counter() - started, 1),
        "hardware": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    multi = next((p for p in args.presets if len(p) > 1), args.presets[0])
    shown = [args.out / "runs" / f"{m}-{v}-{multi}-seed{args.seeds[0]}" for m in args.methods for v in ("baseline", "amcl")]
    report.write_report(shown, args.out / "report.png")
    print(markdown)
    print(json.dumps({k: summary[k] for k in ("data", "seconds")}))


if __name__ == "__main__":
    main()
