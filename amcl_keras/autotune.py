"""`train.jit_compile: auto`: XLA or not, measured on the run's own first steps and remembered.

Whether XLA speeds up a training step depends on the machine, not only on the model: on an
AVX2-only EPYC the ResNet-18 AMCL-SimCLR step was 1.25× faster with XLA, on an AVX-512 Xeon
1.6× slower (README, "Benchmarks"). So `auto` (the default) measures it where the run trains:

1. A run on one device with at least `AUTO_MIN_STEPS` steps (shorter runs would not pay back
   XLA's compile time) and not in deterministic mode (a choice made from timings would make two
   runs on the same machine differ) is eligible; anything else trains without XLA.
2. If the cache (`cache_path()`) holds a choice for this machine and model, it is used.
3. Otherwise `JitCompileChooser` (a callback) times the first steps of the real training:
   `WARMUP_STEPS` + `TIMED_STEPS` without XLA, then the same with XLA, keeps the faster step
   (the median of the timed steps) and caches it. No step is thrown away: both halves train the
   model. If XLA cannot compile the step, the same batch is trained without XLA (no batch is lost:
   while measuring, each step's batch is drawn first and handed to the step function), and
   "without" is cached.

The key (`choice_key`) is the machine (CPU model and vector ISA, cores, oneDNN's ISA cap and
switch, GPU models, TF and Keras versions, `XLA_FLAGS` / `TF_XLA_FLAGS`, thread settings) and
everything that shapes the step (the `model:` config — method, AMCL or not, encoder, heads —,
batch size, input shape, augmentation placement, precision policy, replica count): a choice
measured on one machine or configuration is never applied to another. The record says what was measured, so
`results.json` can show it (`train_speed.jit_compile`).

Example (what `amcl train` does; from Python):
```python
chooser = amcl_keras.autotune.JitCompileChooser(key)
model.fit(dataset, epochs=20, callbacks=[chooser])   # steps 0-13 measure, the rest run the faster way
print(chooser.record)   # {"chosen": False, "seconds_per_step": {"without_xla": 0.16, "xla": 0.23}, ...}
```
"""

import hashlib
import json
import os
import pathlib
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from amcl_keras.distribute import cpu_bfloat16
from amcl_keras.errors import InvalidInputError

AUTO_MIN_STEPS = 100  # runs shorter than this train without XLA (compile time would not pay back)
WARMUP_STEPS = 2  # per variant: the trace (or XLA compile) and one more step, not timed
TIMED_STEPS = 5  # per variant: the median of these decides
CACHE_FILE = "jit_compile.json"
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
# environment variables that change how fast (or whether) XLA or the kernels run
_ENVIRONMENT = ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS", "TF_XLA_FLAGS", "OMP_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "CUDA_VISIBLE_DEVICES")
# what an XLA compile failure of the step raises
_XLA_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError)


def cache_path():
    """`$AMCL_CACHE_DIR/jit_compile.json`, else `$XDG_CACHE_HOME/amcl-keras/...`, else `~/.cache/amcl-keras/...`."""
    root = os.environ.get("AMCL_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "amcl-keras")
    return pathlib.Path(root) / CACHE_FILE


def machine_description():
    """What makes one machine's step speed differ from another's."""
    cpu, flags = "unknown", set()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(f"{details.get('device_name', device.name)} cc{details.get('compute_capability', '?')}")
    return {
        "cpu": cpu,
        "isa": [flag for flag in _ISA_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "environment": {name: os.environ.get(name) for name in _ENVIRONMENT},
        "threads": [tf.config.threading.get_intra_op_parallelism_threads(),
                    tf.config.threading.get_inter_op_parallelism_threads()],
        "gpus": gpus,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def choice_key(model_config, batch_size, input_shape, augment_on, mixed_precision, replicas=1):
    """The cache key: this machine and the shape of this run's training step. `mixed_precision`: the
    policy the step runs under (its name); `replicas`: how many replicas share the global batch."""
    description = {
        "machine": machine_description(),
        "model": model_config,
        "batch_size": batch_size,
        "input_shape": list(input_shape),
        "augment_on": augment_on,
        "mixed_precision": mixed_precision,
        "replicas": replicas,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:20]


def read_choice(key, path=None):
    """The cached record for `key`, or None (a missing or unreadable cache is no error)."""
    try:
        record = json.loads((path or cache_path()).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("chosen"), bool) else None


def write_choice(key, record, path=None):
    """Add `record` to the cache (atomically); a cache that cannot be written is warned about, not fatal."""
    path = path or cache_path()
    try:
        try:
            cache = json.loads(path.read_text())
            cache = cache if isinstance(cache, dict) else {}
        except (OSError, ValueError):
            cache = {}
        cache[key] = record
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(partial, path)
    except OSError as error:
        print(f"amcl: could not cache the jit_compile choice in {str(path)!r} ({error.strerror or error}); "
              "it will be measured again next time. Set AMCL_CACHE_DIR to a writable folder.", file=sys.stderr)


class JitCompileChooser(keras.callbacks.Callback):
    """Times the first steps of `fit` without and with XLA and trains on with the faster one.

    The model must have been compiled with `jit_compile=False`. After the measurement
    `record` holds `{"chosen": bool, "source": "measured", "seconds_per_step": {...}}` and, with
    a `key`, the choice is cached (`write_choice`). Keras reads `model.train_function` before
    every step, so swapping it between steps switches the remaining steps of this `fit` (and of
    later `fit` calls) to the chosen function.
    """

    def __init__(self, key=None, warmup_steps=WARMUP_STEPS, timed_steps=TIMED_STEPS, cache_file=None, log=True,
                 clock=time.perf_counter):
        super().__init__()
        self.key, self.cache_file, self.log, self.clock = key, cache_file, log, clock
        self.warmup_steps, self.timed_steps = warmup_steps, timed_steps
        self.record = None
        self._count = 0
        self._started = None
        self._times = {False: [], True: []}
        self._plain_function = self._xla_function = None
        self._xla_failed = None

    @property
    def decided(self):
        return self.record is not None

    def _variant(self):
        return self._count >= self.warmup_steps + self.timed_steps  # True: measuring XLA

    def on_train_begin(self, logs=None):
        if not self.decided and self.model.jit_compile:
            raise InvalidInputError("JitCompileChooser needs a model compiled with jit_compile=False; it switches XLA on itself.")

    def on_train_batch_begin(self, batch, logs=None):
        if self.decided:
            return
        per_variant = self.warmup_steps + self.timed_steps
        if self._count == per_variant and self._plain_function is None:
            self._switch_to_xla()
        elif self._count >= 2 * per_variant:
            self._decide()
            return
        self._started = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        if self.decided or self._started is None:
            return
        if logs:  # make sure the step has finished before reading the clock
            np.asarray(next(iter(logs.values())))
        elapsed = self.clock() - self._started
        self._started = None
        variant = self._variant()
        position = self._count - (self.warmup_steps + self.timed_steps if variant else 0)
        if position >= self.warmup_steps:
            self._times[variant].append(elapsed)
        self._count += 1

    def _switch_to_xla(self):
        model = self.model
        self._plain_function = model.train_function
        model.jit_compile = True
        model.make_train_function(force=True)
        self._xla_function = xla_function = model.train_function

        def guarded(iterator):
            if self.decided:  # decided inside an earlier call
                return model.train_function(iterator)
            # The batch is drawn here and handed over as a one-element Python iterator (Keras then runs the step
            # on it directly): if XLA fails to compile the step, the SAME batch trains without XLA.
            batch = next(iterator)
            try:
                return xla_function(iter([batch]))
            except _XLA_ERRORS as error:  # XLA cannot compile this step: train on without it
                self._xla_failed = str(error).strip().splitlines()[0][:300]
                self._finish(False)
                return self._plain_function(iter([batch]))

        model.train_function = guarded

    def _decide(self):
        plain, xla = (statistics.median(self._times[v]) for v in (False, True))
        self._finish(xla < plain, {"without_xla": round(plain, 5), "xla": round(xla, 5)})

    def _finish(self, chosen, seconds=None):
        model = self.model
        model.jit_compile = bool(chosen)
        model.train_function = self._xla_function if chosen else self._plain_function  # no guard once chosen
        self.record = {"chosen": bool(chosen), "source": "measured", "seconds_per_step": seconds,
                       "timed_steps": self.timed_steps, "measured_on": time.strftime("%Y-%m-%d")}
        if self._xla_failed:
            self.record["xla_error"] = self._xla_failed
        if self.log:
            if seconds:
                print(f"amcl: jit_compile auto: {seconds['without_xla']:.3f} s/step without XLA, {seconds['xla']:.3f} "
                      f"s/step with XLA (median of {self.timed_steps}) -> training {'with' if chosen else 'without'} "
                      "XLA", file=sys.stderr)
            else:
                print(f"amcl: jit_compile auto: XLA could not compile the step ({self._xla_failed}); training "
                      "without XLA", file=sys.stderr)
        if self.key is not None:
            write_choice(self.key, self.record, self.cache_file)


# --- train.mixed_precision: auto ----------------------------------------------------------------------------------
# `auto` trains in the hardware's safe default: float32 on CPU, mixed_float16 on GPUs with tensor cores (compute
# capability >= 7.0). bfloat16 is NOT chosen, even where it is native and faster: measured on this project's ablation
# (AMCL-SimCLR, 3 seeds, paired against float32 on the same seeds) it cost the colour set 3.5 ± 2.1 linear-probe
# points (every seed lower) while Fashion-MNIST was level (README "Mixed precision"); `mixed_bfloat16` stays
# available when asked for.
BFLOAT16_NOT_CHOSEN = ("bfloat16 is native here ({why}) but not chosen by auto: on the colour set it cost 3.5 ± 2.1 "
                       "linear-probe points against float32 (3 seeds, README 'Mixed precision'); set "
                       "train.mixed_precision=mixed_bfloat16 to use it")


def native_bfloat16(cpu_flags=None, environ=None, gpus=None):
    """(True, why) where bfloat16 is computed natively: every GPU of compute capability >= 8.0, or no GPU and a CPU
    with avx512_bf16 / amx_bf16 whose oneDNN is on and not capped below them; else (False, why)."""
    gpus = gpu_capabilities() if gpus is None else gpus
    if gpus:
        old = [capability for capability in gpus if capability < (8, 0)]
        if old:
            return False, f"a GPU of compute capability {old[0][0]}.{old[0][1]} (< 8.0: no native bfloat16)"
        return True, "GPUs of compute capability >= 8.0"
    native, why = cpu_bfloat16(cpu_flags, environ)
    return bool(native), why


def gpu_capabilities():
    """[(major, minor)] of the visible GPUs ((0, 0) where TF does not say)."""
    found = []
    for device in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(device).get("compute_capability") or (0, 0)
        found.append(tuple(capability))
    return found


def fallback_precision(gpus=None):
    """What `auto` trains in: mixed_float16 on GPUs with tensor cores (compute capability >= 7.0, every GPU),
    float32 elsewhere."""
    gpus = gpu_capabilities() if gpus is None else gpus
    return "mixed_float16" if gpus and all(capability >= (7, 0) for capability in gpus) else "float32"


def choose_precision(setting, gpus=None, cpu_flags=None, environ=None):
    """Resolve `train.mixed_precision`: a named policy is kept; `auto` → the hardware's safe default
    (`fallback_precision`), the record saying why (and, where bfloat16 is native, why it was not chosen)."""
    if setting != "auto":
        return {"setting": setting, "policy": setting, "source": "config"}
    gpus = gpu_capabilities() if gpus is None else gpus
    policy = fallback_precision(gpus)
    record = {"setting": "auto", "policy": policy,
              "source": "GPUs with tensor cores: mixed_float16" if policy == "mixed_float16" else "float32: no GPU "
              "with tensor cores"}
    native, why = native_bfloat16(cpu_flags, environ, gpus)
    if native:
        record["bfloat16"] = BFLOAT16_NOT_CHOSEN.format(why=why)
    return record
