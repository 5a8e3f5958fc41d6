"""AMCL's cost as the global batch grows: the loss alone (forward + backward), time and peak memory, per case and batch.

Cases (each method's defaults from its settings dataclass, 3 heads with AMCL, 1 without):
SimCLR ± AMCL (2B × 2B similarities per head, top-k negatives), MoCo ± AMCL with a key queue of 4,096 and of 65,536
(B × queue per head), Barlow Twins ± AMCL at d' = 2,048 (d' × d' channel pairs per head). Each (case, batch) runs in
its own process: its time is the median of `--repeats` compiled calls on random embeddings, its memory the growth
of the process's peak resident set over the calls (what the loss itself allocates, CPU). The growth exponent is
the slope of log(time) against log(batch) over the batches measured. With `--step ENCODER`, the same process then
times the whole training step of that case's model (XLA unless `--no-step-jit`, synthetic 32×32×3 images, median
of `--step-repeats` steps after as many warm-up steps) and records the process's peak memory and the loss's share
of the step.

    python -m benchmarks.loss_scaling                          # batches 256 1024 4096, every case
    python -m benchmarks.loss_scaling --batches 64 128 --cases simclr --repeats 2   # quick
    python -m benchmarks.loss_scaling --batches 256 1024 --cases amcl_moco_q65536 --step resnet18_cifar   # + the step
"""

import argparse
import json
import math
import resource
import subprocess
import sys

from benchmarks import harness

CASES = {  # name → (method, AMCL, extra model overrides)
    "simclr": ("simclr", False, {}),
    "amcl_simclr": ("simclr", True, {}),
    "moco_q4096": ("moco", False, {"queue_size": 4096}),
    "amcl_moco_q4096": ("moco", True, {"queue_size": 4096}),
    "moco_q65536": ("moco", False, {"queue_size": 65536}),
    "amcl_moco_q65536": ("moco", True, {"queue_size": 65536}),
    "barlow_twins_d2048": ("barlow_twins", False, {"projection_dim": 2048}),
    "amcl_barlow_twins_d2048": ("barlow_twins", True, {"projection_dim": 2048}),
}


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(case, batch, repeats, step_encoder=None, step_repeats=2, step_jit=True):
    """{median_ms, loss_peak_mib} of one case at one batch, in this process; with `step_encoder` also
    {step_median_ms, step_peak_mib, loss_share} of the whole training step on that encoder."""
    from benchmarks import loss_time  # noqa: PLC0415

    method, amcl_on, extra = CASES[case]
    overrides = [f"model.{key}={value}" for key, value in extra.items()]
    loss, config = loss_time.method_loss(method, amcl_on, batch, overrides)
    call = loss_time.loss_step(loss, batch, config.num_heads, config.settings)
    before = peak_rss_mib()
    seconds = harness.timings(call, repeats, warmup=1)
    entry = {"median_ms": round(1000 * sorted(seconds)[len(seconds) // 2], 2),
             "loss_peak_mib": round(peak_rss_mib() - before, 1)}
    if step_encoder:
        shape = (32, 32, 3)
        model = harness.build_model(method, amcl_on, batch, step_encoder, shape, jit=step_jit, extra=overrides)[0]
        steps = harness.time_steps({case: model}, harness.synthetic_views(batch, shape), step_repeats, 1)[case]
        step_ms = 1000 * sorted(steps)[len(steps) // 2]
        entry.update(step_median_ms=round(step_ms, 1), step_peak_mib=round(peak_rss_mib(), 1),
                     loss_share=round(entry["median_ms"] / step_ms, 4))
    return entry


def exponent(points):
    """Least-squares slope of log(y) on log(x)."""
    xs, ys = [math.log(x) for x, _ in points], [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs), 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[256, 1024, 4096], help="global batches (pairs)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per (case, batch) process")
    parser.add_argument("--step", metavar="ENCODER", help="also time the whole training step on this encoder")
    parser.add_argument("--step-repeats", type=int, default=2, help="timed (and warm-up) steps with --step")
    parser.add_argument("--step-jit", action=argparse.BooleanOptionalAction, default=True,
                        help="compile the --step model with XLA (the committed results did)")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "BATCH"), help=argparse.SUPPRESS)
    harness.add_json_option(parser)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args.repeats, args.step, args.step_repeats,
                                     args.step_jit)))
        return
    result = {"benchmark": "loss_scaling", "command": "python -m benchmarks.loss_scaling " + " ".join(sys.argv[1:]),
              "machine": harness.machine(), "versions": harness.versions(), "repeats": args.repeats, "cases": {}}
    rows = []
    for case in args.cases:
        entries = {}
        for batch in args.batches:
            try:
                step = ["--step", args.step, "--step-repeats", args.step_repeats,
                        "--step-jit" if args.step_jit else "--no-step-jit"] if args.step else []
                entries[batch] = harness.run_json([sys.executable, "-m", "benchmarks.loss_scaling", "--one", case,
                                                   batch, "--repeats", args.repeats, *step], timeout=args.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                entries[batch] = {"error": str(error).strip().splitlines()[-1][:300]}
        timed = [(batch, entry["median_ms"]) for batch, entry in entries.items() if "median_ms" in entry]
        result["cases"][case] = {"by_batch": entries, "time_exponent": exponent(timed) if len(timed) > 1 else None}
        row = [case, *(entries[b].get("median_ms", "error") for b in args.batches),
               *(entries[b].get("loss_peak_mib", "error") for b in args.batches), result["cases"][case]["time_exponent"]]
        if args.step:
            row += [*(entries[b].get("step_median_ms", "error") for b in args.batches),
                    *(entries[b].get("step_peak_mib", "error") for b in args.batches),
                    *(entries[b].get("loss_share", "error") for b in args.batches)]
        rows.append(row)
    headers = ["case", *(f"ms @ {b}" for b in args.batches), *(f"MiB @ {b}" for b in args.batches), "time ∝ B^k"]
    if args.step:
        headers += [*(f"step ms @ {b}" for b in args.batches), *(f"step peak MiB @ {b}" for b in args.batches),
                    *(f"loss share @ {b}" for b in args.batches)]
    title = "Loss alone (forward + backward), median ms and peak memory growth"
    harness.report(result, title + (f"; whole step on {args.step} (XLA {args.step_jit})" if args.step else ""), headers, rows, args.json)


if __name__ == "__main__":
    main()
