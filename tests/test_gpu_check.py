"""benchmarks/gpu_check.py stays runnable where no GPU is lent: on this machine it runs (quick) and says so."""

import json
import subprocess
import sys

import pytest
import tensorflow as tf

from amcl_keras import registry


@pytest.mark.slow
def test_the_gpu_check_runs_here_and_reports_what_it_found(tmp_path):
    out = tmp_path / "gpu_check.json"
    completed = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--quick", "--out", str(out)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())  # one JSON, printed and written
    if tf.config.list_physical_devices("GPU"):
        assert result["gpus"] and "note" not in result
    else:
        assert result["gpus"] is None and "no GPU" in result["note"]
    assert all(isinstance(value, float) and value > 0 for value in result["peak_tflops"].values() if "error" not in str(value))
    entry = result["steps"]["float32"]
    assert "error" not in entry and entry["median_step_s"] > 0 and 0 < entry["mfu"]
    assert list(result["amcl_overhead"]) == list(registry.names()[:1])
    assert result["amcl_overhead"][registry.names()[0]]["ratio"] > 0
    assert result["onnx"]["max_abs_diff"] < 1e-3  # the export's own verified tolerance is tighter
