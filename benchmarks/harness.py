"""What the benchmark scripts share, so that each of them holds only what it measures.

- the machine: `machine()` (cores, platform, CPU model and the ISA flags that matter, oneDNN's cap, GPUs),
  `cpu_info()`, `cpu_model_and_flags()`, `openblas_core()`, `versions()`;
- timing: `StepTimer` (a Keras callback), `time_steps` (several models on one dataset in interleaved rounds),
  `interleaved` (the same for any measurement), `timings` / `median_seconds` (a callable);
- models and data: `build_model` / `model_config` (a method's baseline or AMCL model as the step benchmarks train it),
  `synthetic_views` (a fixed two-view batch, repeated), `selected_methods` (`all` = `registry.names()`);
- command lines: `add_model_options`, `add_methods_option`, `add_rounds_options`, `add_json_option`;
- output: `markdown_table`, `report` (the JSON, a title and a table; the JSON written when asked), `write_json`,
  `run_json` (another benchmark in its own process, its JSON back).
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import time

import keras
import numpy as np
import tensorflow as tf

import amcl_keras as amcl
from amcl_keras import registry

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what decides the kernels TF/oneDNN can use here
DEFAULT_METHOD = amcl.config.ModelConfig.method  # the library's default method


# --- the machine ---------------------------------------------------------------------------------------------------

def _fields(text, model_key, flags_key):
    """(model name, set of flags) from `key: value` lines (/proc/cpuinfo or lscpu); None where a key is absent."""
    name = flags = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == model_key and name is None:
            name = value.strip()
        elif key == flags_key and flags is None:
            flags = set(value.split())
    return name, flags


def cpu_model_and_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name and its set of ISA flags: from `cpuinfo`, else from `lscpu` (neither: the name
    `platform.processor()` gives, or None, and no flags)."""
    try:
        name, flags = _fields(pathlib.Path(cpuinfo).read_text(), "model name", "flags")
    except OSError:
        name = flags = None
    if name is None or flags is None:
        try:
            text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
        other_name, other_flags = _fields(text, "Model name", "Flags")
        name, flags = name or other_name, flags if flags is not None else other_flags
    return name or platform.processor() or None, flags or set()


def cpu_info(cpuinfo="/proc/cpuinfo"):
    """{"model_name", "cpus", and per flag of ISA_FLAGS whether the CPU has it}."""
    name, flags = cpu_model_and_flags(cpuinfo)
    return {"model_name": name, "cpus": os.cpu_count(), **{flag: flag in flags for flag in ISA_FLAGS}}


def machine():
    """What a result needs to say about where it was measured: CPU cores, platform, CPU model, its ISA flags
    (ISA_FLAGS), oneDNN's ISA cap (`ONEDNN_MAX_CPU_ISA`, "default" when unset) and the GPUs TensorFlow sees."""
    cpu = cpu_info()
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu_model": cpu["model_name"],
            "isa_flags": {flag: cpu[flag] for flag in ISA_FLAGS},
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
            "gpus": len(tf.config.list_physical_devices("GPU"))}


def openblas_core():
    """The kernel family NumPy's OpenBLAS (loaded with numpy, above) dispatched to (e.g. SkylakeX, Zen, Haswell), or
    None."""
    import ctypes

    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    for path in paths:
        library = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                     "openblas_get_corename"):
            function = getattr(library, name, None)
            if function is not None:
                function.restype = ctypes.c_char_p
                return function().decode()
    return None


def versions():
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()}


# --- timing --------------------------------------------------------------------------------------------------------

class StepTimer(keras.callbacks.Callback):
    """Seconds of every training step `fit` runs, in `times` (a call of `steps_per_call` steps, Keras's
    `steps_per_execution`, counts as that many steps of equal length)."""

    def __init__(self, steps_per_call=1):
        super().__init__()
        self.times = []
        self.steps_per_call = steps_per_call

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append((time.perf_counter() - self._start) / self.steps_per_call)


def interleaved(measure, names, rounds, alternate=False, warmup_rounds=1):
    """`measure(name)` (a list of values) for every name, round after round, so that drift in the machine's load
    falls on all alike; with `alternate` every other round runs the names in reverse order. The first
    `warmup_rounds` rounds are discarded. Returns {name: the values of the `rounds` kept rounds, in order}."""
    names = list(names)
    kept = {name: [] for name in names}
    for index in range(warmup_rounds + rounds):
        for name in (reversed(names) if alternate and index % 2 else names):
            values = measure(name)
            if index >= warmup_rounds:
                kept[name].extend(values)
    return kept


def time_steps(models, dataset, steps, rounds, alternate=False):
    """Training-step seconds of each model of {name: compiled model}, all on `dataset`: one warm-up round (tracing,
    first allocations), then `rounds` rounds of `steps` steps per model. Returns {name: rounds × steps seconds}."""

    def measure(name):
        timer = StepTimer()
        models[name].fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
        return timer.times

    return interleaved(measure, models, rounds, alternate)


def timings(fn, repeats=10, warmup=2):
    """Seconds of each of `repeats` calls of `fn()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, repeats=10, warmup=2):
    """Median seconds of a call of `fn()` (see `timings`)."""
    return statistics.median(timings(fn, repeats, warmup))


# --- models and data -----------------------------------------------------------------------------------------------

def selected_methods(values):
    """`["all"]` → every registered method (`registry.names()`); otherwise the names given, checked."""
    if list(values) == ["all"]:
        return registry.names()
    return tuple(registry.method(name).name for name in values)


def model_config(method, amcl_on, batch, projection_dim=None, hidden_dim=None, objective=None, extra=()):
    """The `model:` config the step benchmarks train: AMCL with 3 heads or the baseline with 1, the method's own
    defaults otherwise, a key queue (where the method has one) of at least 2 × `batch` keys; `extra`: more
    `model.KEY=VALUE` overrides, applied last."""
    spec = registry.method(method)
    overrides = [f"model.method={method}", f"model.amcl={str(amcl_on).lower()}", f"model.num_heads={3 if amcl_on else 1}",
                 f"data.batch_size={batch}"]
    if "queue_size" in spec.setting_names():
        overrides.append(f"model.queue_size={max(spec.settings.queue_size, 2 * batch)}")
    for key, value in (("projection_dim", projection_dim), ("hidden_dim", hidden_dim), ("objective", objective)):
        if value:
            overrides.append(f"model.{key}={value}")
    return amcl.config.load(None, [*overrides, *extra]).model


def build_model(method, amcl_on, batch, encoder, image_shape, width=None, encoder_options=None, projection_dim=None,
                hidden_dim=None, objective=None, jit=False, steps_per_execution=1, extra=()):
    """A compiled model (SGD 0.06, momentum 0.9, weight decay 5e-4, global clipnorm 1.0) of `model_config`'s
    settings on encoder `encoder`; returns (model, encoder, model config)."""
    backbone = amcl.encoders.get(encoder, tuple(image_shape), width=width, options=encoder_options)
    config = model_config(method, amcl_on, batch, projection_dim, hidden_dim, objective, extra)
    model = registry.method(method).model.from_model_config(backbone, config, batch)
    model.compile(optimizer=keras.optimizers.SGD(0.06, momentum=0.9, weight_decay=5e-4, global_clipnorm=1.0),
                  jit_compile=jit, steps_per_execution=steps_per_execution)
    return model, backbone, config


def synthetic_views(batch, image_shape, seed=0):
    """A dataset repeating one fixed batch of two views of `batch` uniform random float32 images (augmentation
    excluded)."""
    rng = np.random.default_rng(seed)
    shape = (batch, *image_shape)
    views = (rng.uniform(size=shape).astype("float32"), rng.uniform(size=shape).astype("float32"))
    return tf.data.Dataset.from_tensors(views).repeat()


# --- command lines -------------------------------------------------------------------------------------------------

def add_model_options(parser, encoder, image_size, channels, batch, width=None, jit=False, width_help=None,
                      jit_help=None):
    """--encoder --width --image-size --channels --batch --projection-dim --hidden-dim --jit/--no-jit."""
    parser.add_argument("--encoder", default=encoder)
    parser.add_argument("--width", type=int, default=width, help=width_help)
    parser.add_argument("--image-size", type=int, default=image_size)
    parser.add_argument("--channels", type=int, default=channels)
    parser.add_argument("--batch", type=int, default=batch, help="pairs per step")
    parser.add_argument("--projection-dim", type=int, help="override the methods' head output size")
    parser.add_argument("--hidden-dim", type=int, help="override the methods' head width")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=jit, help=jit_help)


def add_methods_option(parser, default):
    parser.add_argument("--methods", nargs="+", default=list(default), help=f"any of {registry.names()}, or all")


def add_rounds_options(parser, steps, rounds):
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per round and model")
    parser.add_argument("--rounds", type=int, default=rounds, help="timed rounds (after one warm-up round)")


def add_json_option(parser):
    parser.add_argument("--json", help="also write the JSON here")


# --- output --------------------------------------------------------------------------------------------------------

def markdown_table(headers, rows):
    """A Markdown table: a header row, a rule, one row per sequence of cells (each `str()`-ed)."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def write_json(result, path):
    """`result` as indented JSON at `path` (its folder created)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2), encoding="utf-8")


def report(result, title, headers, rows, json_path=None):
    """Print `result` as indented JSON, a blank line, `title` (unless None) and the Markdown table of `headers` and
    `rows`; write the JSON to `json_path` too when given."""
    print(json.dumps(result, indent=2))
    print()
    if title is not None:
        print(title)
    print(markdown_table(headers, rows))
    if json_path:
        write_json(result, json_path)


def run_json(command, env=None, json_path=None, timeout=None, cwd=None):
    """Run a benchmark in its own process; its JSON: the file `json_path` when given, else the last line it
    printed. RuntimeError (with the end of its output) when it fails."""
    completed = subprocess.run([str(part) for part in command], capture_output=True, text=True, env=env,
                               timeout=timeout, cwd=cwd)
    if completed.returncode:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n"
                           f"{completed.stderr[-3000:] or completed.stdout[-3000:]}")
    if json_path:
        return json.loads(pathlib.Path(json_path).read_text())
    return json.loads(completed.stdout.strip().splitlines()[-1])
