"""What deterministic mode (`train.deterministic: true`) costs: demo training steps/s with and without.

Runs `amcl train` on the demo config in fresh processes (op determinism is process-wide),
alternating the two settings `--repeats` times, and times the epochs after the first (tf.function
tracing excluded) from `history.jsonl`. Prints JSON and a table.

    python -m benchmarks.determinism_cost --repeats 2
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from benchmarks import harness

ROOT = pathlib.Path(__file__).parents[1]


def one_run(deterministic, epochs, steps, out):
    run_dir = pathlib.Path(out) / f"{'det' if deterministic else 'default'}-{len(os.listdir(out))}"
    command = [sys.executable, "-m", "amcl_keras.cli", "train", "--run-dir", str(run_dir), "--epochs", str(epochs),
               "--steps-per-epoch", str(steps), "--set", f"train.deterministic={str(deterministic).lower()}",
               "--set", "export.formats=[]", "--set", "eval.random_init=false", "--set", "eval.probe_epochs=1",
               "--set", "eval.max_examples=500"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT, timeout=3600)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    seconds = sum(record["seconds"] for record in history[1:])
    return (epochs - 1) * steps / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=19, help="steps per epoch (the demo has 19)")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        rates = harness.interleaved(lambda deterministic: [one_run(deterministic, args.epochs, args.steps, out)],
                                    (False, True), args.repeats, alternate=True, warmup_rounds=0)
    default, deterministic = statistics.median(rates[False]), statistics.median(rates[True])
    result = {
        "benchmark": "determinism_cost", "config": "demo (configs/demo.yaml)", "epochs_timed": args.epochs - 1,
        "steps_per_epoch": args.steps, "repeats": args.repeats,
        "steps_per_s": {"default": [round(r, 3) for r in rates[False]], "deterministic": [round(r, 3) for r in rates[True]]},
        "median_steps_per_s": {"default": round(default, 3), "deterministic": round(deterministic, 3)},
        "deterministic_over_default": round(deterministic / default, 3),
        "machine": harness.machine(),
    }
    print(json.dumps(result))
    print(f"\n{'setting':<15} {'steps/s (median)':>17}\n{'default':<15} {default:17.3f}\n"
          f"{'deterministic':<15} {deterministic:17.3f}\nratio deterministic/default: {deterministic / default:.3f}")
    if args.out:
        harness.write_json(result, args.out)


if __name__ == "__main__":
    main()
