"""Soak: the demo model for 2,000 steps in one `fit` call; resident memory and step traces.

    python -m benchmarks.soak                           # 2,000 steps, the run's callbacks attached
    python -m benchmarks.soak --no-with-monitoring      # the bare model.fit
    python -m benchmarks.soak --compare --json benchmarks/results/soak_demo_cpu2.json  # both, one process each

The model, data and optimizer are what `amcl train` builds with the default config (the CPU
demo: AMCL-SimCLR, small_convnet, batch 256 pairs, MirroredStrategy over one CPU device), with
`train.steps_per_epoch` and `train.epochs` set so that `--steps` steps make one `fit` call
(the views repeat; the cosine schedule spans the whole call). A callback reads this process's
resident set size (psutil) at step 1, every `--record-every` steps and at the last step, and
after every epoch's callbacks. `--with-monitoring` (the default) attaches what `amcl_keras.train.fit`
attaches, on a temporary run directory: `monitoring_callbacks` (non-finite guard, online linear
probe every step, per-head telemetry and the τ-saturation warning at epoch ends, TensorBoard,
the JSON-lines history) and the resume backup (every 100 steps and at epoch ends).

Step traces: `model.train_step` is wrapped in a Python counter before the first `fit`; Python
code inside a `tf.function` runs only while it is traced, so the counter is the number of traces
of the step (once per replica). A second, short `fit` call (`--second-fit-steps`) on the same
model tells whether a new `fit` retraces. Defects, as the issue defines them: resident memory
growing more than 5% between step 100 and the last step, or more than one trace per `fit` call.
"""

import argparse
import gc
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time

import keras

import amcl_keras as amcl
from amcl_keras import backups, runs, train
from benchmarks import harness

GROWTH_LIMIT_PERCENT = 5.0
MIB = 1024 * 1024


def rss_mib():
    import psutil

    return psutil.Process().memory_info().rss / MIB


def tracing_counts(function):
    """Trace counts of the `tf.function`s Keras's train function closes over (the step, and the
    loop over the iterator), by name; {} where none is reachable."""
    counts = {}
    for cell in getattr(function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if hasattr(value, "experimental_get_tracing_count"):
            counts[getattr(value, "__name__", repr(value))] = int(value.experimental_get_tracing_count())
    return counts


def make_recorder(total_steps, record_every, state):
    """A callback recording RSS (MiB) by global step and at each epoch end, and step times."""

    class Recorder(harness.StepTimer):
        def __init__(self):
            super().__init__()
            self.step, self.rss, self.epoch_rss, self.objects = 0, {}, [], {}

        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            self.step += 1
            step = self.step
            if step == 1 or step % record_every == 0 or step == total_steps:
                self.rss[step] = round(rss_mib(), 1)
            if step in (1, 100, total_steps) or step % 1000 == 0:
                self.objects[step] = len(gc.get_objects())  # Python objects alive (not collected first)
            if step == 1:
                state["traces_after_step_1"] = state["traces"]

        def on_epoch_end(self, epoch, logs=None):  # placed last: after every other callback's epoch end
            self.epoch_rss.append([epoch + 1, self.step, round(rss_mib(), 1)])

    return Recorder()


def soak(args):
    if args.steps % args.steps_per_epoch:
        raise SystemExit(f"--steps ({args.steps}) must be a multiple of --steps-per-epoch ({args.steps_per_epoch}).")
    epochs = args.steps // args.steps_per_epoch
    overrides = [f"train.steps_per_epoch={args.steps_per_epoch}", f"train.epochs={epochs}", *args.override]
    config = amcl.config.load(None, overrides)
    strategy = amcl.distribute.make_strategy(config.train.strategy, config.train.cpu_replicas)  # first: may split the CPU
    keras.utils.set_random_seed(config.train.seed)
    rss_start = rss_mib()
    training_data = train.load_data(config)
    model = train.build(config, training_data, strategy)
    rss_built = rss_mib()

    state = {"traces": 0}
    original_step = model.train_step

    def counted_train_step(data):
        state["traces"] += 1  # Python: runs only while the step's tf.function traces
        return original_step(data)

    model.train_step = counted_train_step

    with tempfile.TemporaryDirectory(prefix="amcl-soak-") as scratch:
        run_dir = pathlib.Path(scratch) / "run"
        run_dir.mkdir()
        monitoring = []
        if args.with_monitoring:
            monitoring = train.monitoring_callbacks(config, run_dir, model, training_data.views, training_data.train_split,
                                                    training_data.test_split, training_data.image_size)
            monitoring.append(backups.RunBackup(run_dir / runs.BACKUP, config.train.backup_every_steps))
        recorder = make_recorder(args.steps, args.record_every, state)
        started = time.perf_counter()
        model.fit(training_data.views, epochs=epochs, steps_per_epoch=args.steps_per_epoch,
                  callbacks=[*monitoring, recorder], verbose=0, shuffle=False)
        seconds = time.perf_counter() - started
        traces_first = state["traces"]
        functions_first = tracing_counts(model.train_function)
        probe = next((c for c in monitoring if isinstance(c, amcl.callbacks.OnlineLinearProbe)), None)
        probe_traces_first = probe._probe_step.experimental_get_tracing_count() if probe else None
        rss_after_first = rss_mib()

        second = make_recorder(args.second_fit_steps, args.second_fit_steps, state)
        started_second = time.perf_counter()
        model.fit(training_data.views, epochs=1, steps_per_epoch=args.second_fit_steps,
                  callbacks=[*monitoring, second], verbose=0, shuffle=False)
        seconds_second = time.perf_counter() - started_second
        traces_second = state["traces"] - traces_first
        functions_second = tracing_counts(model.train_function)
        probe_traces_second = probe._probe_step.experimental_get_tracing_count() if probe else None
        history_lines = len((run_dir / runs.HISTORY).read_text().splitlines()) if args.with_monitoring else None

    replicas = strategy.num_replicas_in_sync
    rss = recorder.rss
    at_100 = rss.get(100, rss[min(rss, key=lambda step: abs(step - 100))])
    at_end = rss[args.steps]
    growth = 100.0 * (at_end - at_100) / at_100
    traces_per_fit = [traces_first / replicas, traces_second / replicas]
    defects = []
    if growth > GROWTH_LIMIT_PERCENT:
        defects.append(f"resident memory grew {growth:.1f}% between step 100 and step {args.steps} "
                       f"(limit {GROWTH_LIMIT_PERCENT:g}%)")
    for index, traces in enumerate(traces_per_fit, 1):
        if traces > 1:
            defects.append(f"fit call {index} traced the train step {traces:g} times (limit 1 per fit call)")
    result = {
        "benchmark": "soak",
        "model": f"the demo (amcl train's default config): {config.model.method}, amcl={config.model.amcl}, "
                 f"{config.model.num_heads} heads, {config.model.encoder} width {config.model.encoder_width}, "
                 f"batch {config.data.batch_size} pairs, objective {config.model.objective}",
        "strategy": f"{type(strategy).__name__}, {replicas} replica(s)",
        "with_monitoring": args.with_monitoring,
        "callbacks": [type(c).__name__ for c in monitoring] + ["(rss recorder)"],
        "steps": args.steps,
        "steps_per_epoch": args.steps_per_epoch,
        "epochs": epochs,
        "rss_mb": {"at_start": round(rss_start, 1), "model_built": round(rss_built, 1), "step_1": rss[1],
                   "step_100": at_100, f"step_{args.steps}": at_end, "after_fit": round(rss_after_first, 1),
                   "after_second_fit": round(rss_mib(), 1),
                   "peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
        "rss_growth_percent_100_to_end": round(growth, 2),
        "rss_growth_mb_100_to_end": round(at_end - at_100, 1),
        "rss_mb_by_step": {str(step): value for step, value in sorted(rss.items())},
        "rss_mb_at_epoch_end": recorder.epoch_rss,  # [epoch, global step, MiB] after every callback's epoch end
        "python_objects_by_step": {str(step): value for step, value in sorted(recorder.objects.items())},
        "traces": {
            "first_fit": traces_first, "second_fit": traces_second, "replicas": replicas,
            "per_fit_call": traces_per_fit, "during_step_1": state.get("traces_after_step_1"),
            "second_fit_retraced": traces_second > 0,
            "keras_tf_functions_after_first_fit": functions_first,
            "keras_tf_functions_after_second_fit": functions_second,
            "online_probe_step": None if probe is None else {"first_fit": probe_traces_first,
                                                               "second_fit": probe_traces_second},
        },
        "seconds": round(seconds, 1),
        "steps_per_s": round(args.steps / seconds, 3),
        "median_step_s": round(statistics.median(recorder.times), 4),
        "second_fit": {"steps": args.second_fit_steps, "seconds": round(seconds_second, 1),
                       "rss_mb_end": second.rss.get(args.second_fit_steps)},
        "history_records": history_lines,
        "defects": defects,
        "passed": not defects,
        "cpu": harness.cpu_info(),
        "machine": {**harness.machine(), "threads": os.environ.get("TF_NUM_INTRAOP_THREADS")},
        "versions": harness.versions(),
        "command": "python -m benchmarks.soak " + " ".join(sys.argv[1:]),
    }
    return result


def table_parts(results):
    """The headers and rows of the table of {variant: result}."""
    return (
        ["variant", "RSS step 100 (MiB)", "RSS last step (MiB)", "growth", "traces per fit (1st, 2nd)", "steps/s",
         "median step (s)", "seconds"],
        [[name, f"{r['rss_mb']['step_100']:.0f}", f"{r['rss_mb']['step_' + str(r['steps'])]:.0f}",
          f"{r['rss_growth_percent_100_to_end']:+.1f}%",
          f"{r['traces']['per_fit_call'][0]:g}, {r['traces']['per_fit_call'][1]:g}", f"{r['steps_per_s']:.2f}",
          f"{r['median_step_s']:.3f}", f"{r['seconds']:.0f}"] for name, r in results.items()],
    )


def compare(args):
    """Both variants, each in its own process (so neither inherits the other's memory)."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="amcl-soak-parts-") as scratch:
        for name, flag in (("bare fit", "--no-with-monitoring"), ("with monitoring", "--with-monitoring")):
            part = pathlib.Path(scratch) / f"{name.replace(' ', '_')}.json"
            command = [sys.executable, "-m", "benchmarks.soak", "--steps", str(args.steps), "--steps-per-epoch",
                       str(args.steps_per_epoch), "--record-every", str(args.record_every), "--second-fit-steps",
                       str(args.second_fit_steps), *(f"--override={o}" for o in args.override), flag, "--json", str(part)]
            started = time.perf_counter()
            results[name] = harness.run_json(command, json_path=part)
            print(f"  soak {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    first = next(iter(results.values()))
    return {"benchmark": "soak", "command": "python -m benchmarks.soak " + " ".join(sys.argv[1:]),
            "cpu": first["cpu"], "versions": first["versions"],
            "passed": all(r["passed"] for r in results.values()),
            "defects": {name: r["defects"] for name, r in results.items() if r["defects"]},
            "variants": results}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps of the one long fit call")
    parser.add_argument("--steps-per-epoch", type=int, default=50,
                        help="epoch length (epoch-end callbacks run every this many steps; must divide --steps)")
    parser.add_argument("--record-every", type=int, default=100, help="read RSS every this many steps")
    parser.add_argument("--second-fit-steps", type=int, default=50, help="a second, short fit call: does it retrace?")
    parser.add_argument("--with-monitoring", action=argparse.BooleanOptionalAction, default=True,
                        help="attach the run's callbacks (amcl_keras.train.monitoring_callbacks and the backup) "
                             "on a temporary run directory")
    parser.add_argument("--compare", action="store_true",
                        help="run both variants (with and without monitoring), each in its own process")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override on top of the demo's defaults (repeatable)")
    harness.add_json_option(parser)
    args = parser.parse_args()
    if args.compare:
        result = compare(args)
        variants = result["variants"]
    else:
        result = soak(args)
        variants = {"with monitoring" if args.with_monitoring else "bare fit": result}
    first = next(iter(variants.values()))
    title = (f"Soak: {first['model']}; {first['steps']} steps in one fit call ({first['epochs']} epochs of "
             f"{first['steps_per_epoch']}), then a second fit of {first['second_fit']['steps']}; "
             f"{first['cpu']['model_name']} (avx512f: {first['cpu']['avx512f']}), TF {first['versions']['tensorflow']}, "
             f"Keras {first['versions']['keras']}")
    harness.report(result, title, *table_parts(variants), args.json)
    for name, r in variants.items():
        for defect in r["defects"]:
            print(f"DEFECT ({name}): {defect}")


if __name__ == "__main__":
    main()
