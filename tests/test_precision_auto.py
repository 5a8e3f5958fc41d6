"""train.mixed_precision: auto — bfloat16 only where the hardware computes it natively AND it is measured faster
for this step (cached like the XLA choice); the hardware's safe fallback everywhere else."""

import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import autotune, cli, config as config_lib, train
from amcl_keras.distribute import cpu_bfloat16
from tests.test_bad_inputs import TINY


@pytest.mark.parametrize("gpus,flags,environ,native", [
    ([(8, 0)], [], {}, True),  # an A100: bfloat16 tensor cores
    ([(9, 0), (8, 6)], [], {}, True),
    ([(8, 0), (7, 5)], [], {}, False),  # one older GPU: no bfloat16 everywhere
    ([(7, 0)], ["avx512_bf16"], {}, False),  # a V100: the CPU's flags do not matter
    ([], ["avx2", "avx512_bf16"], {}, True),
    ([], ["avx2", "amx_bf16"], {"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
    ([], ["avx2", "avx512_bf16"], {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),  # capped below the instructions
    ([], ["avx2", "avx512f"], {}, False),
    ([], ["avx2", "avx512_bf16"], {"TF_ENABLE_ONEDNN_OPTS": "0"}, False),  # Eigen's kernels: not native
])
def test_native_bfloat16_is_read_from_the_gpus_or_the_cpu_flags(gpus, flags, environ, native):
    found, why = autotune.native_bfloat16(flags, environ, gpus)
    assert found is native and why


@pytest.mark.parametrize("gpus,expected", [([], "float32"), ([(7, 0)], "mixed_float16"), ([(8, 6)], "mixed_float16"),
                                           ([(6, 1)], "float32"), ([(7, 5), (6, 0)], "float32")])
def test_the_fallback_is_float32_on_cpu_and_float16_on_tensor_core_gpus(gpus, expected):
    assert autotune.fallback_precision(gpus) == expected


def test_a_named_policy_is_kept_and_auto_without_native_bfloat16_falls_back(monkeypatch):
    assert autotune.choose_precision("mixed_float16", "k") == {"setting": "mixed_float16", "policy": "mixed_float16",
                                                               "source": "config"}
    monkeypatch.setattr(autotune, "native_bfloat16", lambda: (False, "no bf16 here"))
    record = autotune.choose_precision("auto", "k", make_model=None, batch=None)
    assert record["policy"] == autotune.fallback_precision() and "no bf16 here" in record["source"]


@pytest.mark.parametrize("float32_seconds,bfloat16_seconds", [(0.2, 0.1), (0.1, 0.2)])
def test_auto_keeps_the_faster_measured_policy_and_caches_it(float32_seconds, bfloat16_seconds, tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "native_bfloat16", lambda: (True, "native"))
    monkeypatch.setattr(autotune, "fallback_precision", lambda: "float32")
    timed = []

    def fake_timing(make_model, batch, policies):
        timed.append(policies)
        return {"float32": float32_seconds, "mixed_bfloat16": bfloat16_seconds}

    monkeypatch.setattr(autotune, "time_policies", fake_timing)
    cache = tmp_path / "cache.json"
    first = autotune.choose_precision("auto", "key", cache_file=cache, log=False)
    expected = "mixed_bfloat16" if bfloat16_seconds < float32_seconds else "float32"
    assert first["policy"] == expected and first["source"] == "measured" and timed == [("float32", "mixed_bfloat16")]
    stored = json.loads(cache.read_text())
    assert list(stored) == [autotune.PRECISION_PREFIX + "key"]  # apart from the XLA choices of the same file
    second = autotune.choose_precision("auto", "key", cache_file=cache, log=False)
    assert second["policy"] == expected and second["source"].startswith("cached in") and len(timed) == 1
    third = autotune.choose_precision("auto", "another step", cache_file=cache, log=False)
    assert third["source"] == "measured" and len(timed) == 2  # another key: measured again
    assert autotune.choose_precision("auto", "key", reason="a short run", cache_file=cache)["source"] == "a short run"


def test_time_policies_trains_a_fresh_model_per_policy_and_returns_medians():
    built = []

    def make_model(policy):
        with keras.dtype_policies.DTypePolicyScope(policy) if hasattr(keras.dtype_policies, "DTypePolicyScope") \
                else _policy(policy):
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        built.append((policy, model.layers[0].compute_dtype))
        return model

    batch = (np.ones((8, 4), "float32"), np.ones((8, 1), "float32"))
    seconds = autotune.time_policies(make_model, batch, ("float32", "mixed_float16"), warmup_steps=1, timed_steps=3)
    assert set(seconds) == {"float32", "mixed_float16"} and all(value > 0 for value in seconds.values())
    assert built == [("float32", "float32"), ("mixed_float16", "float16")]


class _policy:
    def __init__(self, policy):
        self.policy, self.previous = policy, keras.config.dtype_policy()

    def __enter__(self):
        keras.config.set_dtype_policy(self.policy)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)


def _data(steps):
    return types.SimpleNamespace(steps_per_epoch=steps, input_shape=(28, 28, 1), views=None)


def test_auto_does_not_measure_with_replicas_determinism_or_a_short_run(two_replicas, monkeypatch):
    monkeypatch.setattr(autotune, "native_bfloat16", lambda: (True, "native"))
    long_run = autotune.AUTO_MIN_STEPS
    one = tf.distribute.get_strategy()
    for overrides, strategy, steps, why in [([], two_replicas, long_run, "several replicas"),
                                            (["train.deterministic=true"], one, long_run, "deterministic"),
                                            ([], one, 3, "fewer than")]:
        config = config_lib.load(None, ["train.epochs=1", *overrides])
        record = train.choose_precision(config, _data(steps), strategy)
        assert record["policy"] == autotune.fallback_precision() and why in record["source"], record


@pytest.mark.slow
def test_a_run_records_the_choice_and_trains_in_it(tmp_path, monkeypatch):
    """A run long enough to measure: `results.json` says what was chosen and why, and the trained model's layers
    computed in that policy (float32 where bfloat16 is not native: nothing measured)."""
    monkeypatch.setenv("AMCL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "AUTO_MIN_STEPS", 4)
    built = []
    original = train.build_model

    def recording_build_model(*args, **kwargs):
        model = original(*args, **kwargs)
        built.append(model.encoder.layers[-1].compute_dtype)
        return model

    monkeypatch.setattr(train, "build_model", recording_build_model)
    overrides = [*TINY, "--steps-per-epoch", "4", "--set", "train.mixed_precision=auto", "--set",
                 "train.jit_compile=false"]
    assert cli.main(["train", "--run-dir", str(tmp_path / "run"), *overrides]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    choice = results["mixed_precision_choice"]
    assert choice["setting"] == "auto" and results["mixed_precision"] == choice["policy"]
    native, _ = cpu_bfloat16()
    if native and not tf.config.list_logical_devices("GPU"):
        seconds = choice["seconds_per_step"]
        assert choice["source"] == "measured" and set(seconds) == {"float32", "mixed_bfloat16"}
        assert choice["policy"] == min(seconds, key=seconds.get)
        assert built[:2] == ["float32", "bfloat16"]  # the two throwaway models, then the run's own
    else:
        assert choice["policy"] == autotune.fallback_precision() and "native" in choice["source"]
    assert built[-1] == {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}[choice["policy"]]
