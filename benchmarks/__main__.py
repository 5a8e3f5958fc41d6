"""Every benchmark side by side, in one run: `python -m benchmarks all [--quick]`.

Each measurement runs in its own subprocess (so peak memory is per configuration and one
configuration's threads or compiled code cannot slow the next), one after another, on this
machine. Writes `<out>.json` (every raw result) and `<out>.md` (the tables the README shows)
and prints the Markdown.

Sections: the machine's dense float32 peak (best of NumPy and TF on a 4096² matmul); ResNet-18
(CIFAR stem) AMCL-SimCLR at batch 256 pairs: images/s and MFU, with the options tried (XLA,
oneDNN off, one thread; small_convnet: XLA, steps_per_execution); AMCL overhead per method (time
and memory, AMCL with 3 heads vs the baseline with 1, on ResNet-18 and on small_convnet); replica scaling (1 vs 2 logical CPU
replicas); the losses alone; input-pipeline headroom; export latency.

    python -m benchmarks all --quick        # ~20 min on 2 CPU cores
    python -m benchmarks all                # more timed steps
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

METHODS = ("simclr", "moco", "barlow_twins", "simsiam")
SMALL = ["--encoder", "small_convnet", "--image-size", "28", "--channels", "1"]


def _run(module, arguments, env=None, json_path=None):
    """Run `python -m benchmarks.<module> ARGS`; returns its JSON (last stdout line, or json_path)."""
    command = [sys.executable, "-m", f"benchmarks.{module}", *arguments]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if completed.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    print(f"  {module} {' '.join(arguments)} {env or ''}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if json_path:
        return json.loads(pathlib.Path(json_path).read_text())
    return json.loads(completed.stdout.strip().splitlines()[-1])


def collect(args, scratch):
    steps = ["--warmup", "1", "--steps", "2" if args.quick else "4"]
    small_steps = ["--warmup", "2", "--steps", "5" if args.quick else "10"]
    results = {"peak": _run("train_step", ["--peak"])}

    resnet = ["--encoder", "resnet18_cifar", "--batch", "256", *steps]
    results["resnet18"] = {
        "amcl": _run("train_step", ["--method", "simclr", *resnet]),
        "amcl_xla": _run("train_step", ["--method", "simclr", *resnet, "--jit"]),
        "amcl_onednn_off": _run("train_step", ["--method", "simclr", *resnet], env={"TF_ENABLE_ONEDNN_OPTS": "0"}),
        "amcl_threads_1": _run("train_step", ["--method", "simclr", *resnet],
                               env={"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}),
    }
    results["methods_resnet18"] = {
        method: {
            "baseline": _run("train_step", ["--method", method, "--no-amcl", *resnet]),
            "amcl": results["resnet18"]["amcl"] if method == "simclr" else _run("train_step", ["--method", method, *resnet]),
        }
        for method in METHODS
    }
    results["small_convnet_options"] = {
        "default": _run("train_step", ["--method", "simclr", *SMALL, *small_steps]),
        "xla": _run("train_step", ["--method", "simclr", *SMALL, *small_steps, "--jit"]),
        "steps_per_execution_4": _run("train_step", ["--method", "simclr", *SMALL, *small_steps,
                                                     "--steps-per-execution", "4"]),
    }
    results["methods"] = {
        method: {
            variant: _run("train_step", ["--method", method, flag, *SMALL, *small_steps])
            for variant, flag in (("baseline", "--no-amcl"), ("amcl", "--amcl"))
        }
        for method in METHODS
    }
    results["replicas"] = {
        str(count): _run("train_step", ["--method", "simclr", *SMALL, *small_steps, "--replicas", str(count)])
        for count in (1, 2)
    }
    results["loss_time"] = _run("loss_time", [])
    results["input_pipeline"] = _run("input_pipeline", ["--json", str(scratch / "input.json")],
                                     json_path=scratch / "input.json")
    results["export_latency"] = _run("export_latency", ["--repeats", "10" if args.quick else "30",
                                                        "--json", str(scratch / "export.json")],
                                     json_path=scratch / "export.json")
    return results


def markdown(results):
    peak = results["peak"]
    best = peak["best_gflops"]
    lines = [
        f"Machine: {results['machine']}. Dense float32 peak (4096² matmul, best of 3): NumPy {peak['numpy']} GFLOP/s, "
        f"TF {peak['tensorflow']} GFLOP/s; MFU below is against {best}.",
        "",
        "**ResNet-18 (CIFAR stem, 0.56 GMAC/image), AMCL-SimCLR (3 heads), batch 256 pairs** — training FLOPs = "
        "3 × 2 × MACs (encoder + heads) × 512 images per step:",
        "",
        "| setting | step (s) | images/s | GFLOP/s | MFU | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    names = {"amcl": "no XLA (the library default), oneDNN on", "amcl_xla": "XLA (jit_compile=True)",
             "amcl_onednn_off": "no XLA, TF_ENABLE_ONEDNN_OPTS=0", "amcl_threads_1": "no XLA, 1 intra-op thread"}
    for key, row in results["resnet18"].items():
        lines.append(f"| {names[key]} | {row['median_step_s']:.2f} | {row['images_per_s']:.1f} | {row['gflops_per_s']} "
                     f"| {100 * row['gflops_per_s'] / best:.0f}% | {row['peak_rss_mib']:.0f} |")
    for title, key in (("ResNet-18 (CIFAR stem), batch 256 pairs, no XLA", "methods_resnet18"),
                       ("small_convnet 28×28×1, batch 256 pairs, no XLA", "methods")):
        lines += ["", f"**AMCL overhead per method** ({title}; baseline = 1 head, AMCL = 3 heads + temperatures):", "",
                  "| method | baseline step (s) | AMCL step (s) | time ratio | baseline RSS (MiB) | AMCL RSS (MiB) "
                  "| memory ratio |", "|---|---|---|---|---|---|---|"]
        for method, pair in results[key].items():
            b, a = pair["baseline"], pair["amcl"]
            lines.append(f"| {method} | {b['median_step_s']:.3f} | {a['median_step_s']:.3f} | "
                         f"{a['median_step_s'] / b['median_step_s']:.2f} | {b['peak_rss_mib']:.0f} | "
                         f"{a['peak_rss_mib']:.0f} | {a['peak_rss_mib'] / b['peak_rss_mib']:.2f} |")
    lines += ["", "**small_convnet 28×28×1, AMCL-SimCLR, batch 256 pairs** (step options):", "",
              "| setting | step (s) | images/s | MFU |", "|---|---|---|---|"]
    for key, row in results["small_convnet_options"].items():
        lines.append(f"| {key} | {row['median_step_s']:.3f} | {row['images_per_s']:.0f} | "
                     f"{100 * row['gflops_per_s'] / best:.0f}% |")
    one, two = results["replicas"]["1"], results["replicas"]["2"]
    lines += ["", "**Replica scaling** (MirroredStrategy over logical CPU devices, small_convnet AMCL-SimCLR, "
              "global batch 256 pairs, no XLA):", "", "| replicas | step (s) | images/s |", "|---|---|---|",
              f"| 1 | {one['median_step_s']:.3f} | {one['images_per_s']:.0f} |",
              f"| 2 | {two['median_step_s']:.3f} | {two['images_per_s']:.0f} |"]
    if "loss_time" in results:
        lines += ["", "**The losses alone** (forward + backward on random embeddings, batch 256 pairs, ms; "
                  "`benchmarks/loss_time.py`):", "", "| loss | baseline, 1 head | AMCL, 1 head | AMCL, 3 heads |",
                  "|---|---|---|---|"]
        for method, row in results["loss_time"]["losses"].items():
            lines.append(f"| {method} | {row['baseline_1_head']} | {row['amcl_1_head']} | {row['amcl_3_heads']} |")
    pipeline = results["input_pipeline"]["settings"]
    lines += ["", "**Input pipeline** (tf.data, two simclr views per image) vs the step:", "",
              "| setting | tf.data images/s | step consumes images/s | headroom |", "|---|---|---|---|"]
    for name, row in pipeline.items():
        lines.append(f"| {name} | {row['tf_data_images_per_s']:.0f} | {row['step_consumes_images_per_s']:.0f} | "
                     f"{row['headroom']:.0f}× |")
    export, artefacts = results["export_latency"]["paths"], results["export_latency"].get("artefacts", {})
    lines += ["", "**Export latency** (small_convnet, uint8 input, median ms per call; size on disk):", "",
              "| path | batch 1 | batch 64 | size |", "|---|---|---|---|"]
    for name, row in export.items():
        size = f"{artefacts[name]['size_bytes'] / 1e6:.3f} MB" if name in artefacts else "-"
        lines.append(f"| {name} | {row['batch_1']['median_ms']:.2f} | {row['batch_64']['median_ms']:.2f} | {size} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["all"])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps (~15 min on 2 cores)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results/all_cpu2"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scratch = args.out.parent / (args.out.name + "_parts")
    scratch.mkdir(exist_ok=True)
    started = time.perf_counter()
    results = collect(args, scratch)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    results["seconds"] = round(time.perf_counter() - started)
    results["command"] = "python -m benchmarks " + " ".join(sys.argv[1:])
    text = markdown(results)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(f"Command: `{results['command']}` ({results['seconds']} s)\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
