"""train.jit_compile: auto — the chooser switches between real training steps and keeps the faster; the cache."""

import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import autotune, cli, config as config_lib, train
from tests.test_bad_inputs import TINY

WARMUP, TIMED = 1, 2
PER_VARIANT = WARMUP + TIMED


def _model(layer=None):
    layers = [keras.Input((4,)), keras.layers.Dense(8, activation="relu")]
    layers += [layer] if layer is not None else []
    model = keras.Sequential(layers + [keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False)
    return model


def _data(steps):
    x = np.random.default_rng(0).normal(size=(steps * 4, 4)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, x[:, :1] * 2)).batch(4)


class _FunctionLog(keras.callbacks.Callback):
    """The train function Keras is about to call, step by step."""

    def __init__(self):
        super().__init__()
        self.functions = []

    def on_train_batch_begin(self, batch, logs=None):
        self.functions.append(self.model.train_function)


def _fake_clock(model, plain_seconds, xla_seconds):
    """A clock on which a step takes `plain_seconds` without XLA and `xla_seconds` with it."""
    now = [0.0]

    def clock():
        now[0] += xla_seconds if model.jit_compile else plain_seconds
        return now[0]

    return clock


@pytest.mark.parametrize("plain,xla,chosen", [(0.2, 0.1, True), (0.1, 0.2, False)])
def test_the_chooser_measures_both_on_real_steps_and_keeps_the_faster(plain, xla, chosen, tmp_path):
    model = _model()
    chooser = autotune.JitCompileChooser("key", WARMUP, TIMED, cache_file=tmp_path / "cache.json", log=False,
                                         clock=_fake_clock(model, plain, xla))
    log = _FunctionLog()
    steps = 2 * PER_VARIANT + 3
    model.fit(_data(steps), epochs=1, callbacks=[chooser, log], verbose=0)

    assert int(model.optimizer.iterations.numpy()) == steps, "every step trains, measured or not"
    assert chooser.record["chosen"] is chosen and model.jit_compile is chosen
    assert chooser.record["seconds_per_step"] == {"without_xla": pytest.approx(plain), "xla": pytest.approx(xla)}
    plain_function = log.functions[0]
    measuring_xla = log.functions[PER_VARIANT]
    assert all(f is plain_function for f in log.functions[:PER_VARIANT])
    assert all(f is measuring_xla for f in log.functions[PER_VARIANT:2 * PER_VARIANT])
    assert measuring_xla is not plain_function
    after = log.functions[2 * PER_VARIANT:]
    assert all(f is after[0] for f in after)
    assert (after[0] is plain_function) is (not chosen)
    assert autotune.read_choice("key", tmp_path / "cache.json") == chooser.record


def test_a_step_xla_cannot_compile_falls_back_to_no_xla(tmp_path):
    class HostOp(keras.layers.Layer):  # a NumPy op inside the step: XLA cannot compile it
        def call(self, x):
            y = tf.numpy_function(lambda v: v, [x], tf.float32)
            return tf.ensure_shape(y, x.shape)

    model = _model(HostOp())
    chooser = autotune.JitCompileChooser("key", WARMUP, TIMED, cache_file=tmp_path / "cache.json", log=False)
    steps = 2 * PER_VARIANT + 2
    history = model.fit(_data(steps), epochs=1, callbacks=[chooser], verbose=0)
    assert chooser.record["chosen"] is False and "xla_error" in chooser.record and not model.jit_compile
    assert np.isfinite(history.history["loss"][-1])
    # no batch is lost: the batch XLA failed on trained without XLA, so every batch made one optimizer step
    assert int(model.optimizer.iterations.numpy()) == steps
    assert autotune.read_choice("key", tmp_path / "cache.json")["chosen"] is False


def test_the_cache_survives_garbage_and_an_unwritable_folder(tmp_path, capsys):
    path = tmp_path / "cache.json"
    assert autotune.read_choice("k", path) is None  # missing
    path.write_text("{not json")
    assert autotune.read_choice("k", path) is None  # corrupt: measured again, no error
    autotune.write_choice("k", {"chosen": True}, path)
    autotune.write_choice("j", {"chosen": False}, path)
    assert autotune.read_choice("k", path) == {"chosen": True} and autotune.read_choice("j", path) == {"chosen": False}
    path.write_text(json.dumps({"k": {"chosen": "yes"}}))
    assert autotune.read_choice("k", path) is None  # not a record this version wrote
    blocker = tmp_path / "file"
    blocker.write_text("")
    autotune.write_choice("k", {"chosen": True}, blocker / "cache.json")  # parent is a file
    assert "could not cache the jit_compile choice" in capsys.readouterr().err


def test_the_key_separates_machines_and_steps(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the uncapped machine first
    key = autotune.choice_key({"encoder": "small_convnet"}, 64, (28, 28, 1), "pipeline", "float32")
    assert key == autotune.choice_key({"encoder": "small_convnet"}, 64, (28, 28, 1), "pipeline", "float32")
    assert key != autotune.choice_key({"encoder": "small_convnet"}, 128, (28, 28, 1), "pipeline", "float32")
    assert key != autotune.choice_key({"encoder": "resnet18_cifar"}, 64, (28, 28, 1), "pipeline", "float32")
    assert key != autotune.choice_key({"encoder": "small_convnet"}, 64, (28, 32, 1), "pipeline", "float32")
    assert key != autotune.choice_key({"encoder": "small_convnet"}, 64, (28, 28, 1), "pipeline", "mixed_bfloat16")
    assert key != autotune.choice_key({"encoder": "small_convnet"}, 64, (28, 28, 1), "pipeline", "float32", replicas=2)
    assert key != autotune.choice_key({"encoder": "small_convnet", "amcl": False}, 64, (28, 28, 1), "pipeline",
                                      "float32")
    for variable, value in (("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=false"), ("OMP_NUM_THREADS", "1"),
                            ("TF_ENABLE_ONEDNN_OPTS", "0"), ("TF_NUM_INTRAOP_THREADS", "1")):
        with monkeypatch.context() as patch:
            patch.setenv(variable, value)
            assert key != autotune.choice_key({"encoder": "small_convnet"}, 64, (28, 28, 1), "pipeline", "float32"), \
                variable
    assert key == autotune.choice_key({"encoder": "small_convnet"}, 64, (28, 28, 1), "pipeline", "float32")
    described = autotune.machine_description()
    monkeypatch.setattr(autotune, "machine_description", lambda: {**described, "cpu": "another CPU model"})
    assert key != autotune.choice_key({"encoder": "small_convnet"}, 64, (28, 28, 1), "pipeline", "float32")
    monkeypatch.setattr(autotune, "machine_description", lambda: {**described, "gpus": ["NVIDIA H200 cc(9, 0)"]})
    assert key != autotune.choice_key({"encoder": "small_convnet"}, 64, (28, 28, 1), "pipeline", "float32")
    monkeypatch.undo()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the same CPU capped to AVX2 is another machine
    assert key != autotune.choice_key({"encoder": "small_convnet"}, 64, (28, 28, 1), "pipeline", "float32")


@pytest.mark.parametrize("value,expected", [("true", True), ("false", False), ("auto", "auto")])
def test_jit_compile_takes_true_false_or_auto(value, expected):
    assert config_lib.load(None, [f"train.jit_compile={value}"]).train.jit_compile == expected
    assert config_lib.load(None, []).train.jit_compile == "auto"


@pytest.mark.parametrize("value", ["sometimes", "1"])
def test_jit_compile_refuses_anything_else(value):
    with pytest.raises(config_lib.ConfigError, match="train.jit_compile"):
        config_lib.load(None, [f"train.jit_compile={value}"])


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())["jit_compile"]


def test_auto_on_a_short_run_trains_without_xla(tmp_path):
    assert cli.main(["train", "--run-dir", str(tmp_path / "short"), *TINY]) == 0
    short = _results(tmp_path / "short")
    assert short["setting"] == "auto" and short["chosen"] is False and "fewer than" in short["source"]


def _job(overrides, strategy, tmp_path):
    return train.Job(config_lib.load(None, overrides), tmp_path, tmp_path, strategy, 0.0)


def test_auto_resolves_to_no_xla_with_replicas_or_determinism_and_reads_the_cache(two_replicas, tmp_path, monkeypatch):
    monkeypatch.setenv("AMCL_CACHE_DIR", str(tmp_path / "cache"))
    long_run = autotune.AUTO_MIN_STEPS
    job = _job([], two_replicas, tmp_path)
    assert train._resolve_jit_compile(job, None, None, long_run) is None
    assert job.jit_compile["chosen"] is False and "several replicas" in job.jit_compile["source"]
    job = _job(["train.deterministic=true"], tf.distribute.get_strategy(), tmp_path)
    assert train._resolve_jit_compile(job, None, None, long_run) is None and "deterministic" in job.jit_compile["source"]
    job = _job(["train.jit_compile=true"], tf.distribute.get_strategy(), tmp_path)
    assert train._resolve_jit_compile(job, None, None, 1) is None and job.jit_compile["chosen"] is True

    job, model = _job([], tf.distribute.get_strategy(), tmp_path), _model()
    data = types.SimpleNamespace(input_shape=(28, 28, 1))
    chooser = train._resolve_jit_compile(job, data, model, long_run)
    assert isinstance(chooser, autotune.JitCompileChooser)  # nothing cached yet: measure
    autotune.write_choice(chooser.key, {"chosen": True, "seconds_per_step": {"without_xla": 2.0, "xla": 1.0}})
    assert train._resolve_jit_compile(job, data, model, long_run) is None  # cached: no measurement
    assert model.jit_compile is True and job.jit_compile["source"].startswith("cached in")


@pytest.mark.slow
def test_auto_measures_once_per_machine_and_step_then_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMCL_CACHE_DIR", str(tmp_path / "cache"))
    # the threshold lowered to what the measurement itself takes (2 × (warm-up + timed) steps): the same code path
    # as a 100-step run, at a fifth of its time
    monkeypatch.setattr(autotune, "AUTO_MIN_STEPS", 2 * (autotune.WARMUP_STEPS + autotune.TIMED_STEPS) + 2)
    long_enough = [*TINY, "--steps-per-epoch", str(autotune.AUTO_MIN_STEPS), "--set", "eval.online_probe_every=0",
                   "--set", "eval.telemetry_every=0", "--set", "eval.tensorboard=false", "--set", "eval.random_init=false"]
    assert cli.main(["train", "--run-dir", str(tmp_path / "first"), *long_enough]) == 0
    first = _results(tmp_path / "first")
    assert first["source"] == "measured" and set(first["seconds_per_step"]) == {"without_xla", "xla"}
    assert first["chosen"] == (first["seconds_per_step"]["xla"] < first["seconds_per_step"]["without_xla"])
    cached = json.loads((tmp_path / "cache" / autotune.CACHE_FILE).read_text())
    assert [record["chosen"] for record in cached.values()] == [first["chosen"]]

    assert cli.main(["train", "--run-dir", str(tmp_path / "second"), *long_enough]) == 0
    second = _results(tmp_path / "second")
    assert second["source"].startswith("cached in") and second["chosen"] == first["chosen"]
    assert second["seconds_per_step"] == first["seconds_per_step"]

    assert cli.main(["train", "--run-dir", str(tmp_path / "other"), *long_enough, "--set", "model.num_heads=2"]) == 0
    assert _results(tmp_path / "other")["source"] == "measured"  # another step shape is measured anew

