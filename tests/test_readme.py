"""The README's Python example runs as written (with a shorter fit); its layout map matches the tree."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
README = ROOT / "README.md"


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


def _layout_block():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Layout"):text.index("## Contributing")]
    return section[section.index("```"):section.rindex("```")]


def test_the_layout_map_names_every_module_benchmark_and_script():
    """README's "Layout" is a map of the tree: every module of the package, every benchmark and every script is on
    it (a new file that is not fails here), and every file it names exists."""
    block = _layout_block()
    named = set(re.findall(r"[\w]+\.(?:py|sh)", block))
    package = {p.name for p in (ROOT / "amcl_keras").rglob("*.py") if p.name != "__init__.py"}
    benchmarks = {p.name for p in (ROOT / "benchmarks").glob("*") if p.suffix in (".py", ".sh") and p.name != "__init__.py"}
    scripts = {p.name for p in (ROOT / "scripts").glob("*.py")}
    missing = (package | benchmarks | scripts) - named
    assert not missing, f"README 'Layout' does not mention: {sorted(missing)}"
    existing = {p.name for p in ROOT.rglob("*") if p.suffix in (".py", ".sh") and ".venv" not in p.parts}
    assert named <= existing, f"README 'Layout' names files that do not exist: {sorted(named - existing)}"
