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
import sys
import time

from amcl_keras import registry
from benchmarks import harness

SMALL = ["--encoder", "small_convnet", "--image-size", "28", "--channels", "1"]
DEFAULT = harness.DEFAULT_METHOD  # the method of the single-method sections (the library's default)


def _run(module, arguments, env=None, json_path=None):
    """Run `python -m benchmarks.<module> ARGS`; returns its JSON (last stdout line, or json_path)."""
    started = time.perf_counter()
    result = harness.run_json([sys.executable, "-m", f"benchmarks.{module}", *arguments],
                              env={**os.environ, **(env or {})}, json_path=json_path)
    print(f"  {module} {' '.join(arguments)} {env or ''}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return result


def collect(args, scratch):
    steps = ["--warmup", "1", "--steps", "2" if args.quick else "4"]
    small_steps = ["--warmup", "2", "--steps", "5" if args.quick else "10"]
    results = {"peak": _run("train_step", ["--peak"])}

    resnet = ["--encoder", "resnet18_cifar", "--batch", "256", *steps]
    results["resnet18"] = {
        "amcl": _run("train_step", ["--method", DEFAULT, *resnet]),
        "amcl_xla": _run("train_step", ["--method", DEFAULT, *resnet, "--jit"]),
        "amcl_onednn_off": _run("train_step", ["--method", DEFAULT, *resnet], env={"TF_ENABLE_ONEDNN_OPTS": "0"}),
        "amcl_threads_1": _run("train_step", ["--method", DEFAULT, *resnet],
                               env={"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}),
    }
    results["methods_resnet18"] = {
        method: {
            "baseline": _run("train_step", ["--method", method, "--no-amcl", *resnet]),
            "amcl": results["resnet18"]["amcl"] if method == DEFAULT else _run("train_step", ["--method", method, *resnet]),
        }
        for method in registry.names()
    }
    results["small_convnet_options"] = {
        "default": _run("train_step", ["--method", DEFAULT, *SMALL, *small_steps]),
        "xla": _run("train_step", ["--method", DEFAULT, *SMALL, *small_steps, "--jit"]),
        "steps_per_execution_4": _run("train_step", ["--method", DEFAULT, *SMALL, *small_steps,
                                                     "--steps-per-execution", "4"]),
    }
    results["methods"] = {
        method: {
            variant: _run("train_step", ["--method", method, flag, *SMALL, *small_steps])
            for variant, flag in (("baseline", "--no-amcl"), ("amcl", "--amcl"))
        }
        for method in registry.names()
    }
    results["replicas"] = {
        str(count): _run("train_step", ["--method", DEFAULT, *SMALL, *small_steps, "--replicas", str(count)])
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
    label = registry.method(DEFAULT).label(True)  # AMCL-SimCLR
    table = harness.markdown_table
    names = {"amcl": "no XLA (the library default), oneDNN on", "amcl_xla": "XLA (jit_compile=True)",
             "amcl_onednn_off": "no XLA, TF_ENABLE_ONEDNN_OPTS=0", "amcl_threads_1": "no XLA, 1 intra-op thread"}

    def overhead_row(method, b, a):
        return [method, f"{b['median_step_s']:.3f}", f"{a['median_step_s']:.3f}",
                f"{a['median_step_s'] / b['median_step_s']:.2f}", f"{b['peak_rss_mib']:.0f}", f"{a['peak_rss_mib']:.0f}",
                f"{a['peak_rss_mib'] / b['peak_rss_mib']:.2f}"]

    parts = [
        f"Machine: {results['machine']}. Dense float32 peak (4096² matmul, best of 3): NumPy {peak['numpy']} GFLOP/s, "
        f"TF {peak['tensorflow']} GFLOP/s; MFU below is against {best}.",
        f"**ResNet-18 (CIFAR stem, 0.56 GMAC/image), {label} (3 heads), batch 256 pairs** — training FLOPs = "
        "3 × 2 × MACs (encoder + heads) × 512 images per step:",
        table(["setting", "step (s)", "images/s", "GFLOP/s", "MFU", "peak RSS (MiB)"],
              [[names[key], f"{row['median_step_s']:.2f}", f"{row['images_per_s']:.1f}", row["gflops_per_s"],
                f"{100 * row['gflops_per_s'] / best:.0f}%", f"{row['peak_rss_mib']:.0f}"]
               for key, row in results["resnet18"].items()]),
    ]
    for title, key in (("ResNet-18 (CIFAR stem), batch 256 pairs, no XLA", "methods_resnet18"),
                       ("small_convnet 28×28×1, batch 256 pairs, no XLA", "methods")):
        parts += [f"**AMCL overhead per method** ({title}; baseline = 1 head, AMCL = 3 heads + temperatures):",
                  table(["method", "baseline step (s)", "AMCL step (s)", "time ratio", "baseline RSS (MiB)",
                         "AMCL RSS (MiB)", "memory ratio"],
                        [overhead_row(method, pair["baseline"], pair["amcl"]) for method, pair in results[key].items()])]
    one, two = results["replicas"]["1"], results["replicas"]["2"]
    parts += [f"**small_convnet 28×28×1, {label}, batch 256 pairs** (step options):",
              table(["setting", "step (s)", "images/s", "MFU"],
                    [[key, f"{row['median_step_s']:.3f}", f"{row['images_per_s']:.0f}",
                      f"{100 * row['gflops_per_s'] / best:.0f}%"] for key, row in results["small_convnet_options"].items()]),
              f"**Replica scaling** (MirroredStrategy over logical CPU devices, small_convnet {label}, "
              "global batch 256 pairs, no XLA):",
              table(["replicas", "step (s)", "images/s"],
                    [[count, f"{row['median_step_s']:.3f}", f"{row['images_per_s']:.0f}"]
                     for count, row in (("1", one), ("2", two))])]
    if "loss_time" in results:
        parts += ["**The losses alone** (forward + backward on random embeddings, batch 256 pairs, ms; "
                  "`benchmarks/loss_time.py`):",
                  table(["loss", "baseline, 1 head", "AMCL, 1 head", "AMCL, 3 heads"],
                        [[method, row["baseline_1_head"], row["amcl_1_head"], row["amcl_3_heads"]]
                         for method, row in results["loss_time"]["losses"].items()])]
    export, artefacts = results["export_latency"]["paths"], results["export_latency"].get("artefacts", {})
    parts += ["**Input pipeline** (tf.data, two simclr views per image) vs the step:",
              table(["setting", "tf.data images/s", "step consumes images/s", "headroom"],
                    [[name, f"{row['tf_data_images_per_s']:.0f}", f"{row['step_consumes_images_per_s']:.0f}",
                      f"{row['headroom']:.0f}×"] for name, row in results["input_pipeline"]["settings"].items()]),
              "**Export latency** (small_convnet, uint8 input, median ms per call; size on disk):",
              table(["path", "batch 1", "batch 64", "size"],
                    [[name, f"{row['batch_1']['median_ms']:.2f}", f"{row['batch_64']['median_ms']:.2f}",
                      f"{artefacts[name]['size_bytes'] / 1e6:.3f} MB" if name in artefacts else "-"]
                     for name, row in export.items()])]
    return "\n\n".join(parts) + "\n"


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
    results["machine_details"] = harness.machine()
    results["seconds"] = round(time.perf_counter() - started)
    results["command"] = "python -m benchmarks " + " ".join(sys.argv[1:])
    text = markdown(results)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(f"Command: `{results['command']}` ({results['seconds']} s)\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
