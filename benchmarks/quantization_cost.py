"""What each export format costs: accuracy, size on disk and latency of a trained encoder's artefacts.

For one run directory (by default it trains the demo first, `amcl train`'s defaults), exports the
encoder to every format, evaluates the Keras encoder and each reloaded artefact with the same
protocol (`amcl eval RUN_DIR [--artefact FORMAT]`: linear probe and kNN on the run's dataset), and
times every path at batch 1 and 64 (`benchmarks.export_latency --run-dir`, in its own process).
Prints JSON and a Markdown table; the README's quantization table comes from here.

    python -m benchmarks.quantization_cost --train runs/demo-quant   # ~5 min on 2 CPU cores
    python -m benchmarks.quantization_cost --run-dir runs/simclr-...  # an existing run
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

from amcl_keras import cli, evaluation, export
from benchmarks import harness


def _cli(*arguments):
    code = cli.main(list(arguments))
    if code:
        raise SystemExit(f"amcl {' '.join(arguments)} failed with exit code {code}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", help="an existing run directory (written by amcl train)")
    where.add_argument("--train", metavar="RUN_DIR", help="train the demo into RUN_DIR first")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per path and batch")
    harness.add_json_option(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    run_dir = pathlib.Path(args.run_dir or args.train)
    if args.train:
        _cli("train", "--run-dir", str(run_dir), "--overwrite")
    formats = list(export.EXPORT_FORMATS)
    out = run_dir / "export-all"
    _cli("export", str(run_dir), "--out", str(out), "--formats", *formats, "--overwrite")

    scores = {"keras": evaluation.evaluate_run(run_dir)}
    for name in formats:
        _cli("eval", str(run_dir), "--artefact", name, "--export-dir", str(out))
        scores[name] = json.loads(evaluation.eval_path(run_dir, name).read_text())

    with tempfile.TemporaryDirectory() as scratch:
        latency_json = pathlib.Path(scratch) / "latency.json"
        latency = harness.run_json([sys.executable, "-m", "benchmarks.export_latency", "--run-dir", run_dir, "--repeats",
                                    args.repeats, "--json", latency_json], json_path=latency_json)

    rows = {}
    for name in ["keras", *formats]:
        timing, artefact = latency["paths"].get(name, {}), latency["artefacts"].get(name, {})
        rows[name] = {
            "linear_probe": scores[name]["linear_probe"]["accuracy"],
            "knn": scores[name]["knn"]["accuracy"],
            "size_mb": artefact["size_bytes"] / 1e6 if artefact else None,
            "weights": artefact.get("weights", "float32"),
            "relative_error": artefact.get("relative_error"),
            "batch_1_ms": timing.get("batch_1", {}).get("median_ms"),
            "batch_64_ms": timing.get("batch_64", {}).get("median_ms"),
        }
    result = {
        "benchmark": "quantization_cost",
        "run_dir": str(run_dir),
        "protocol": scores["keras"]["linear_probe"]["protocol"] + "; kNN " + scores["keras"]["knn"]["protocol"],
        "formats": rows,
        "machine": latency.get("machine"),
        "versions": latency.get("versions"),
        "seconds": round(time.perf_counter() - started),
    }
    fmt = lambda value, spec: "–" if value is None else format(value, spec)  # noqa: E731
    harness.report(result, None, ["format", "linear probe", "kNN", "size (MB)", "rel. error vs Keras", "batch 1 (ms)",
                                  "batch 64 (ms)"],
                   [[name, f"{row['linear_probe'] * 100:.1f}%", f"{row['knn'] * 100:.1f}%", fmt(row["size_mb"], ".2f"),
                     fmt(row["relative_error"], ".1e"), fmt(row["batch_1_ms"], ".2f"), fmt(row["batch_64_ms"], ".2f")]
                    for name, row in rows.items()], args.json)


if __name__ == "__main__":
    main()
