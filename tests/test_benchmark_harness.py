"""What the benchmark scripts share (benchmarks/harness.py): tables, the report, the timing helpers, the machine."""

import json
import os
import platform

import keras
import numpy as np
import pytest
import tensorflow as tf

from amcl_keras import registry
from benchmarks import harness


def test_markdown_table_is_a_header_a_rule_and_one_row_per_sequence():
    table = harness.markdown_table(["method", "step (s)", "ratio"], [["a", "0.100", 1.5], ["b", 2, None]])
    assert table == ("| method | step (s) | ratio |\n"
                     "|---|---|---|\n"
                     "| a | 0.100 | 1.5 |\n"
                     "| b | 2 | None |")


def test_report_prints_the_json_the_title_and_the_table_and_writes_the_json_it_printed(tmp_path, capsys):
    result = {"benchmark": "x", "values": [1, 2.5], "nested": {"a": None}}
    path = tmp_path / "deeper" / "result.json"
    harness.report(result, "The title", ["h1", "h2"], [["r", 1]], json_path=path)
    printed = capsys.readouterr().out
    text = json.dumps(result, indent=2)
    assert printed == f"{text}\n\nThe title\n| h1 | h2 |\n|---|---|\n| r | 1 |\n"
    assert json.loads(path.read_text()) == result
    assert path.read_text() == text  # the file holds exactly what was printed


def test_report_without_a_title_or_a_json_path_prints_no_title_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    harness.report({"a": 1}, None, ["h"], [[1]])
    assert capsys.readouterr().out == '{\n  "a": 1\n}\n\n| h |\n|---|\n| 1 |\n'
    assert list(tmp_path.iterdir()) == []


def test_interleaved_runs_rounds_in_order_alternating_and_drops_the_warmup_rounds():
    calls = []

    def measure(name):
        calls.append(name)
        return [f"{name}{len(calls)}"]

    kept = harness.interleaved(measure, ["a", "b"], rounds=2, alternate=True)
    assert calls == ["a", "b", "b", "a", "a", "b"]  # round 0 (warm-up) a, b; round 1 reversed; round 2 a, b
    assert kept == {"a": ["a4", "a5"], "b": ["b3", "b6"]}
    calls.clear()
    kept = harness.interleaved(measure, ["a", "b"], rounds=2, warmup_rounds=0)
    assert calls == ["a", "b", "a", "b"] and kept == {"a": ["a1", "a3"], "b": ["b2", "b4"]}


def test_time_steps_returns_rounds_times_steps_timings_per_model():
    def tiny():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        return model

    models = {"first": tiny(), "second": tiny()}
    dataset = tf.data.Dataset.from_tensors((np.ones((4, 3), "float32"), np.zeros((4, 1), "float32"))).repeat()
    times = harness.time_steps(models, dataset, steps=3, rounds=2, alternate=True)
    assert set(times) == {"first", "second"}
    for values in times.values():
        assert len(values) == 2 * 3 and all(value > 0 for value in values)
    # the warm-up round trained too: every model has run (1 + rounds) × steps steps
    assert all(int(model.optimizer.iterations) == 3 * 3 for model in models.values())


def test_step_timer_divides_a_call_by_its_steps(monkeypatch):
    clock = iter([10.0, 12.0, 20.0, 21.0])
    monkeypatch.setattr(harness.time, "perf_counter", lambda: next(clock))
    timer = harness.StepTimer(steps_per_call=4)
    for batch in range(2):
        timer.on_train_batch_begin(batch)
        timer.on_train_batch_end(batch)
    assert timer.times == [0.5, 0.25]


def test_timings_warm_up_then_time_each_call_and_the_median_is_their_median():
    calls = []
    values = harness.timings(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(values) == 3 and all(value >= 0 for value in values)
    assert harness.median_seconds(lambda: None, repeats=1, warmup=0) >= 0
    import time

    assert harness.median_seconds(lambda: time.sleep(0.01), repeats=3, warmup=0) >= 0.01


def test_synthetic_views_repeat_one_fixed_pair_of_different_uniform_views():
    first, second = list(harness.synthetic_views(5, (4, 4, 2), seed=3).take(2))
    for view in first:
        assert view.shape == (5, 4, 4, 2) and view.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(view)) and float(tf.reduce_max(view)) < 1.0
    assert not np.array_equal(first[0], first[1])
    np.testing.assert_array_equal(first[0], second[0])
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(first[0], rng.uniform(size=(5, 4, 4, 2)).astype("float32"))


def test_machine_describes_this_machine(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    described = harness.machine()
    assert set(described) == {"cpus", "platform", "cpu_model", "isa_flags", "onednn_max_isa", "gpus"}
    assert described["cpus"] == os.cpu_count()
    assert described["platform"] == platform.platform()
    assert described["onednn_max_isa"] == "AVX2"
    assert described["gpus"] == len(tf.config.list_physical_devices("GPU"))
    assert set(described["isa_flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert harness.machine()["onednn_max_isa"] == "default"
    assert harness.versions() == {"tensorflow": tf.__version__, "keras": keras.__version__,
                                  "python": platform.python_version()}


def test_cpu_info_reads_the_first_processor_of_a_cpuinfo_file(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 avx512f amx_bf16\n\n"
                       "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu avx512_bf16\n")
    assert harness.cpu_model_and_flags(cpuinfo) == ("Test CPU 9000", {"fpu", "sse", "avx2", "avx512f", "amx_bf16"})
    assert harness.cpu_info(cpuinfo) == {"model_name": "Test CPU 9000", "cpus": os.cpu_count(), "avx2": True,
                                         "avx512f": True, "avx512_bf16": False, "amx_bf16": True}


def test_cpu_info_falls_back_to_lscpu_without_a_cpuinfo_file(tmp_path):
    import shutil
    import subprocess

    if shutil.which("lscpu") is None:
        pytest.skip("no lscpu here")
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), None)
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("Flags")), set())
    name, found = harness.cpu_model_and_flags(tmp_path / "missing")
    assert found == flags
    if model:
        assert name == model


def test_selected_methods_and_model_config_follow_the_registry():
    assert harness.selected_methods(["all"]) == registry.names()
    assert harness.selected_methods([registry.names()[-1]]) == (registry.names()[-1],)
    with pytest.raises(ValueError):
        harness.selected_methods(["no_such_method"])
    for method in registry.names():
        spec = registry.method(method)
        baseline, adaptive = harness.model_config(method, False, 4096), harness.model_config(method, True, 4096)
        assert (baseline.method, baseline.amcl, baseline.num_heads) == (method, False, 1)
        assert (adaptive.amcl, adaptive.num_heads) == (True, 3)
        assert adaptive.projection_dim == spec.settings.projection_dim
        if "queue_size" in spec.setting_names():  # at least 2 × batch keys
            assert adaptive.queue_size == max(spec.settings.queue_size, 2 * 4096)


def test_the_loss_scaling_exponent_is_the_log_log_slope():
    from benchmarks import loss_scaling

    assert loss_scaling.exponent([(256, 3.0), (1024, 48.0), (4096, 768.0)]) == 2.0  # 3·(B/256)²
    assert loss_scaling.exponent([(256, 5.0), (4096, 80.0)]) == 1.0
