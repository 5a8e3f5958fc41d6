"""Choosing the `tf.distribute` strategy from the config."""

import os
import sys

import keras
import tensorflow as tf

from amcl_keras.constants import STRATEGIES
from amcl_keras.errors import EnvironmentProblemError, InvalidInputError


def use_cpu_replicas(count):
    """Split the CPU into `count` logical devices (for MirroredStrategy on a CPU-only machine).

    Must run before TensorFlow creates any tensor; otherwise a clear error says so.
    """
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:
        current = len(tf.config.list_logical_devices("CPU"))
        if current == count:
            return
        raise EnvironmentProblemError(
            f"Cannot split the CPU into {count} logical devices: TensorFlow is already initialised with "
            f"{current}. Call amcl_keras.distribute.use_cpu_replicas({count}) first thing in the process."
        ) from error




_WARNED = []  # the warning below, once per process


def one_op_at_a_time():
    """TensorFlow's inter-op parallelism set to 1, as deterministic mode needs: two ops that run at once share the
    intra-op thread pool, and a kernel that gets fewer threads splits its reductions differently, so the same
    step rounds differently from run to run (measured on the demo, 2-core AVX-512 EPYC: 3 of 6 runs of the same
    deterministic command ended with other weights, up to 1.7e-5 apart; 6 of 6 equal with one op at a time; intra-op
    threads at 1 did not help). Takes effect only before TensorFlow's runtime starts (the first op or device
    listing); returns False, with a warning, when it is too late and the setting is not already 1."""
    if os.environ.get("TF_NUM_INTEROP_THREADS") == "1" or tf.config.threading.get_inter_op_parallelism_threads() == 1:
        return True
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        return True
    except RuntimeError:
        if _WARNED:
            return False
        _WARNED.append(True)
        print("amcl: warning: deterministic mode could not set TensorFlow's inter-op parallelism to 1: TensorFlow "
              "already started in this process, so runs may differ in the last bits. Call "
              "amcl_keras.enable_determinism() first thing in the process, or set TF_NUM_INTEROP_THREADS=1 before "
              "Python starts.", file=sys.stderr)
        return False


def enable_determinism(seed=0):
    """Make training reproducible bit for bit: seed Python, NumPy, TensorFlow and Keras with `seed`
    and turn on TensorFlow's op determinism (`tf.config.experimental.enable_op_determinism`: every op,
    tf.data included, gives the same result for the same inputs; ops without a deterministic kernel
    raise), running one op at a time (`one_op_at_a_time`: concurrent ops change how kernels split their
    reductions). Call it once, before building the data and the model. Two processes that then run the
    same code on the same data get the same weights (on the same machine and TF build). Op
    determinism stays on for the rest of the process. `amcl train` does this with
    `train.deterministic: true`.

    Example:
    ```python
    import amcl_keras as amcl
    amcl.enable_determinism(seed=0)
    ```
    """
    one_op_at_a_time()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below the first with bfloat16 instructions
_ISAS_WITHOUT_BFLOAT16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_bfloat16(cpu_flags=None, environ=None):
    """(True, why) where TensorFlow's CPU kernels compute bfloat16 natively: oneDNN on and a CPU with `avx512_bf16` /
    AMX that oneDNN is not capped below (`ONEDNN_MAX_CPU_ISA=AVX2`); else (False, why). Unknown CPUs (no
    /proc/cpuinfo) and oneDNN switched off (Eigen's slow bfloat16 kernels) count as (None, why): nothing known."""
    environ = os.environ if environ is None else environ
    if environ.get("TF_ENABLE_ONEDNN_OPTS", "1") == "0":
        return None, "oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0): Eigen's bfloat16 kernels, not native"
    if cpu_flags is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
                cpu_flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), None)
        except OSError:
            cpu_flags = None
        if cpu_flags is None:
            return None, "the CPU's flags are unknown (no /proc/cpuinfo)"
    cap = environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    native = "avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags
    if native and cap not in _ISAS_WITHOUT_BFLOAT16:
        return True, "the CPU computes bfloat16 natively (" + ("amx_bf16" if "amx_bf16" in cpu_flags else "avx512_bf16") + ")"
    return False, (f"oneDNN is capped to ONEDNN_MAX_CPU_ISA={cap}, below bfloat16 instructions" if native
                   else "this CPU has no native bfloat16 instructions (avx512_bf16 or AMX)")


def check_precision(policy, cpu_flags=None, environ=None):
    """Refuse `mixed_bfloat16` where TensorFlow's CPU kernels cannot run it: no GPU, oneDNN on, and a CPU without
    native bfloat16 (`avx512_bf16` / AMX), or oneDNN capped below it (`ONEDNN_MAX_CPU_ISA=AVX2`). There oneDNN
    fails inside the first convolution with "could not create a primitive descriptor"."""
    if policy != "mixed_bfloat16" or tf.config.list_logical_devices("GPU"):
        return
    native, why = cpu_bfloat16(cpu_flags, environ)
    if native is not False:
        return
    capped = "capped" in why
    raise EnvironmentProblemError(
        f"train.mixed_precision=mixed_bfloat16 cannot run on this machine: there is no GPU and {why}, so TensorFlow's "
        "oneDNN kernels cannot compute in bfloat16. Use train.mixed_precision=auto (the default: it picks what this "
        "machine runs well) or float32, train on a GPU or a CPU with avx512_bf16/AMX"
        + (", or unset ONEDNN_MAX_CPU_ISA" if capped else "")
        + " (TF_ENABLE_ONEDNN_OPTS=0 runs it on slow Eigen kernels).")


def make_strategy(name="auto", cpu_replicas=1):
    """`auto`: MirroredStrategy over all visible GPUs, else the default strategy;
    `mirrored`: MirroredStrategy over the GPUs, or over `cpu_replicas` logical CPU devices;
    `default`: the default (single-device) strategy;
    `multi_worker`: MultiWorkerMirroredStrategy over the hosts named in the `TF_CONFIG`
    environment variable (the standard TF cluster description; each worker runs the same command)."""
    if name not in STRATEGIES:
        raise InvalidInputError(f"Unknown strategy {name!r}: use one of {STRATEGIES}.")
    if name == "multi_worker":
        return _multi_worker()
    if name == "mirrored":
        use_cpu_replicas(cpu_replicas)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and not gpus):
        return tf.distribute.get_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")[: max(cpu_replicas, 1)]
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def _multi_worker():
    import json
    import os

    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise InvalidInputError(
            "train.strategy=multi_worker needs the TF_CONFIG environment variable on every worker, e.g. "
            'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\' '
            "(index 1 on the second host). Use strategy 'mirrored' on one machine."
        )
    try:
        spec = json.loads(raw)
        spec["cluster"], spec["task"]["type"], spec["task"]["index"]
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidInputError(f"TF_CONFIG is not a valid cluster description ({error!r}): {raw!r}. It needs "
                         '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": N}}.') from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """True where this process writes files: always, except on the non-chief workers of a
    MultiWorkerMirroredStrategy (the chief is task "chief", else worker 0)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
