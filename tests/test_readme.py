"""The README's Python example runs as written (with a shorter fit)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## In Python\n\n```python\n(.*?)```", text, re.S).group(1)
    assert "model.fit(views, epochs=10" in block
    block = block.replace("epochs=10", "epochs=1, steps_per_epoch=2")
    block = block.replace("tf.distribute.MirroredStrategy()", "tf.distribute.MirroredStrategy(['/cpu:0'])")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["features"].shape == (1000, 128)
    assert (tmp_path / "my_export" / "encoder.onnx").exists()
