"""The package's import graph: config and the run room at the bottom, no hidden upward edges.

Read from the source (ast), so the test sees every import, including ones inside functions.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "amcl_keras"


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """{(imported amcl_keras module, at module level?)} of one source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.startswith("amcl_keras"):
                found.add((name, id(node) in top_level))
    return found


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for imported, top in _imports(path):
            # `from amcl_keras import config` names the module amcl_keras.config
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported != name and imported != "amcl_keras":
                edges.add((imported, top))
        graph[name] = edges
    return graph


GRAPH = _graph()


def _reachable(start):
    seen, todo = set(), [start]
    while todo:
        for target, _ in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


# The two places that import on purpose inside functions: the package's `load()` (which `import amcl_keras` runs at
# once, and the `amcl` command defers) and the command line, whose commands import what they use only after the
# arguments are parsed, so that `amcl --help` never imports TensorFlow (tests/test_cli.py checks it).
DEFERRED_ON_PURPOSE = {"amcl_keras", "amcl_keras.cli"}


def test_no_package_import_is_hidden_inside_a_function():
    """Docstring examples aside (`import amcl_keras as amcl` in a code block is not code), every
    edge between package modules is a module-level import, visible at the top of the file."""
    lazy = {name: sorted(t for t, top in edges if not top) for name, edges in GRAPH.items()}
    assert {name: targets for name, targets in lazy.items() if targets and name not in DEFERRED_ON_PURPOSE} == {}


def test_the_command_line_imports_nothing_heavy_at_module_level():
    """What `amcl_keras.cli` imports at the top is TensorFlow-free: config and below."""
    top = {target for target, at_top in GRAPH["amcl_keras.cli"] if at_top}
    assert top <= {"amcl_keras.config", "amcl_keras.constants", "amcl_keras.errors"}, top


@pytest.mark.parametrize("bottom,allowed", [
    ("amcl_keras.errors", set()),
    ("amcl_keras.constants", {"amcl_keras.errors"}),
    ("amcl_keras.registry", {"amcl_keras.errors"}),
    ("amcl_keras.config", {"amcl_keras.constants", "amcl_keras.registry", "amcl_keras.errors"}),
    ("amcl_keras.runs", {"amcl_keras.config", "amcl_keras.constants", "amcl_keras.registry", "amcl_keras.errors"}),
    ("amcl_keras.backups", {"amcl_keras.runs", "amcl_keras.config", "amcl_keras.constants", "amcl_keras.registry",
                            "amcl_keras.errors"}),
])
def test_config_and_the_run_room_sit_at_the_bottom(bottom, allowed):
    assert _reachable(bottom) <= allowed


@pytest.mark.parametrize("upper", ["amcl_keras.train", "amcl_keras.cli", "amcl_keras.methods", "amcl_keras.export"])
def test_nothing_below_reaches_up(upper):
    """No module below `upper` imports it (directly or through others)."""
    below = ["amcl_keras.config", "amcl_keras.runs", "amcl_keras.losses", "amcl_keras.temperature",
             "amcl_keras.heads", "amcl_keras.data", "amcl_keras.augment", "amcl_keras.evaluation"]
    for name in below:
        if name != upper:
            reached = {m for m in _reachable(name) if m == upper or m.startswith(upper + ".")}  # a package's modules too
            assert not reached, f"{name} reaches {sorted(reached)}"


def test_methods_and_the_training_job_sit_above_config_and_runs():
    assert "amcl_keras.config" in _reachable("amcl_keras.methods.simclr")
    assert {"amcl_keras.config", "amcl_keras.runs", "amcl_keras.registry"} <= _reachable("amcl_keras.train")


def test_no_import_cycle():
    assert not [name for name in GRAPH if name in _reachable(name)]


# amcl_keras.export: the package's front (export_encoder and the public names) on reading and verification, those on
# the format table; every other module of it is a format module (saved_model.py, onnx.py, litert.py, ...), on the format
# table alone: a new format is one more such module (or a few lines that call `register`:
# tests/test_export_format_recipe.py), never an edit of another format's
EXPORT_TABLE = "amcl_keras.export.formats"
EXPORT_SHARED = {
    EXPORT_TABLE: set(),
    "amcl_keras.export.read": {EXPORT_TABLE},
    "amcl_keras.export.verify": {EXPORT_TABLE, "amcl_keras.export.read", "amcl_keras.export.saved_model"},
}


def test_the_export_modules_sit_in_layers():
    modules = {name for name in GRAPH if name.startswith("amcl_keras.export.")}
    assert set(EXPORT_SHARED) < modules
    for name in modules:
        allowed = EXPORT_SHARED.get(name, {EXPORT_TABLE})
        inside = {target for target, _ in GRAPH[name] if target == "amcl_keras.export" or target in modules}
        assert inside <= allowed, f"{name} imports {sorted(inside - allowed)}"
