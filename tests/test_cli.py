import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

import amcl_keras
from amcl_keras import cli, errors as amcl_errors, registry, train as train_module
from tests.methods import helpers

REDUCED = [
    "--epochs", "1", "--steps-per-epoch", "3",
    "--set", "data.batch_size=64", "--set", "eval.probe_epochs=2", "--set", "eval.max_examples=400",
]


def test_reduced_demo_writes_its_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--run-dir", str(run_dir), *REDUCED]) == 0
    printed = capsys.readouterr().out
    assert "random init (same architecture)" in printed and "AMCL-SimCLR, 1 epochs" in printed
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.yaml", "encoder.keras", "export", "final.weights.h5", "history.jsonl", "results.json", "tensorboard",
    ]
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["encoder.onnx", "metadata.json", "saved_model"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["epochs"] == 1 and config["data"]["batch_size"] == 64
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1]
    assert {"loss", "tau_pos_0", "tau_neg_2", "learning_rate"} <= set(history[0])
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("trained", "random_init"):
        assert 0.0 <= results[key]["linear_probe"] <= 1.0 and 0.0 <= results[key]["knn"] <= 1.0
    assert results["strategy"] == "MirroredStrategy"
    assert max(results["export"]["max_abs_diff"]["onnx"].values()) <= 1e-4
    # a finished run is not retrained by accident: the same command returns its results ...
    stamp = (run_dir / "final.weights.h5").stat().st_mtime_ns
    assert cli.main(["train", "--run-dir", str(run_dir), *REDUCED]) == 0
    assert "holds this finished run" in capsys.readouterr().err
    assert (run_dir / "final.weights.h5").stat().st_mtime_ns == stamp
    # ... and a changed config is refused, naming the change
    assert cli.main(["train", "--run-dir", str(run_dir), *REDUCED, "--set", "train.seed=3"]) == 2
    err = capsys.readouterr().err
    assert "different config (train.seed: 0 -> 3)" in err and "--overwrite" in err


@pytest.mark.slow
def test_tfds_dataset_through_the_cli_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=64):
        code = cli.main([
            "train", "--run-dir", str(tmp_path / "r"), "--epochs", "1", "--set", "data.dataset=cifar10",
            "--set", "data.batch_size=16", "--set", "model.encoder_width=8", "--set", "eval.probe_epochs=1",
            "--set", "eval.knn_k=5", "--set", "export.formats=[onnx]",
        ])
    assert code == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["examples"] == {"train": 64, "test": 64}
    # the export verified itself on the dataset's own (RGB, 32x32) test images
    metadata = json.loads((tmp_path / "r" / "export" / "metadata.json").read_text())
    assert metadata["input"]["shape"] == [None, None, None, 3]


def test_config_error_exits_2_with_a_message(tmp_path, capsys):
    assert cli.main(["train", "--run-dir", str(tmp_path / "r"), "--set", "model.num_head=2"]) == 2
    assert "Did you mean 'num_heads'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_installed_command_runs_as_a_process(tmp_path):
    """The console entry point, as a user runs it (a fresh process)."""
    completed = subprocess.run(
        [sys.executable, "-m", "amcl_keras.cli", "train", "--run-dir", str(tmp_path / "p"), *REDUCED],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "linear probe" in completed.stdout
    assert (tmp_path / "p" / "encoder.keras").exists()
    # a quiet first run (it trains, evaluates and exports to ONNX): none of TensorFlow's C++ start-up lines and no
    # third-party deprecation warnings (tf2onnx calls TF1 APIs), only Keras's progress and the project's own lines
    noise = ["absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "is deprecated",
             "Instructions for updating", "will be removed in a future version"]
    assert [marker for marker in noise if marker in completed.stderr + completed.stdout] == [], completed.stderr[-3000:]
    assert all(line.startswith(("amcl:", " ")) or "step" in line or not line.strip()
               for line in completed.stderr.splitlines()), completed.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", [name for name in helpers.METHODS if name != helpers.DEFAULT_METHOD])
def test_method_shortcuts_train_the_baseline(method, tmp_path, capsys):
    code = cli.main([
        "train", "--run-dir", str(tmp_path / method), "--method", method, "--no-amcl", *REDUCED,
        "--set", "model.projection_dim=32", "--set", "model.hidden_dim=64", "--set", "export.formats=[]",
        *[argument for setting in helpers.own_settings(method, queue_size=256) for argument in ("--set", setting)],
    ])
    assert code == 0
    config = yaml.safe_load((tmp_path / method / "config.yaml").read_text())
    assert config["model"]["method"] == method and config["model"]["amcl"] is False
    assert config["model"]["num_heads"] == 1  # the baseline, not the multi-head arm (--heads-only)
    assert config["train"]["learning_rate"] == registry.method(method).learning_rate  # the method's declared default
    history = [json.loads(line) for line in (tmp_path / method / "history.jsonl").read_text().splitlines()]
    assert set(history[0]) >= {"loss"} and not any(key.startswith("tau_") for key in history[0])


def test_no_amcl_and_heads_only_exclude_each_other(tmp_path, capsys):
    code = cli.main(["train", "--run-dir", str(tmp_path / "r"), "--no-amcl", "--heads-only"])
    assert code == 2 and "--heads-only" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_results_record_the_wall_time_of_each_stage(tiny_run):
    """The demo's time breakdown comes from here (README, "Benchmarks"): every stage is timed and
    together they fit in the run's total."""
    results = json.loads((tiny_run / "results.json").read_text())
    stages = results["stage_seconds"]
    assert set(stages) == {"data", "build", "evaluate_random_init", "fit", "save", "evaluate"}  # no export asked
    assert all(seconds >= 0 for seconds in stages.values())
    assert sum(stages.values()) <= results["seconds"] + 0.05
    assert stages["fit"] > 0 and stages["evaluate"] > 0


# --- expected failures (exit 2, one line) versus bugs (exit 1, traceback) --------------------------------


def _raising(error):
    def run(*args, **kwargs):
        raise error

    return run


@pytest.mark.parametrize("error", [
    amcl_errors.InvalidInputError("data.dataset: 'x' has images of shape (2, 3); expected [H, W, C]"),
    amcl_errors.EnvironmentProblemError("TensorFlow is already initialised with 1 CPU device"),
    OSError(28, "No space left on device", "/full/disk/backup"),
], ids=["invalid-input", "environment", "disk-full"])
def test_an_expected_failure_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, error):
    monkeypatch.setattr(train_module, "run", _raising(error))
    assert cli.main(["train", "--run-dir", str(tmp_path / "r"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bug" not in err
    assert err.strip().splitlines()[-1].startswith("amcl: train failed: ")
    assert (error.strerror if isinstance(error, OSError) and error.strerror else str(error)) in err


@pytest.mark.parametrize("error", [
    TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'"),
    ValueError("Exception encountered when calling layer 'dense' (deep inside Keras)"),  # not an AMCLError
    RuntimeError("a RuntimeError from inside TensorFlow"),
    OSError("an OSError with no OS error number"),
], ids=["type-error", "keras-value-error", "runtime-error", "bare-oserror"])
def test_an_unexpected_exception_is_a_bug_with_its_traceback_and_exit_1(tmp_path, capsys, monkeypatch, error):
    """A ValueError or RuntimeError that is not the library's own is NOT tidied into an 'error' line: the
    traceback is the only way to find the bug."""
    monkeypatch.setattr(train_module, "run", _raising(error))
    assert cli.main(["train", "--run-dir", str(tmp_path / "r"), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and str(error) in err
    assert "this is a bug in amcl-keras" in err and "report it" in err


def test_every_error_the_library_raises_on_purpose_is_an_amcl_error():
    """The library's own checks raise `AMCLError` subclasses (still ValueError / OSError / ... for Python callers):
    no `raise ValueError(` / `raise RuntimeError(` is left in the package, so the CLI can tell them from bugs."""
    import pathlib
    import re

    import amcl_keras

    package = pathlib.Path(amcl_keras.__file__).parent
    bare = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py")
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"raise (ValueError|RuntimeError)\(", line)]
    assert bare == []
    for error in (amcl_keras.config.ConfigError, amcl_keras.runs.RunReadError, amcl_keras.runs.RunWriteError,
                  amcl_keras.runs.RunDirectoryError, amcl_keras.backups.RunPreempted, amcl_keras.export.ExportError,
                  amcl_keras.callbacks.NonFiniteLossError):
        assert issubclass(error, amcl_errors.AMCLError), error


# --- configs by name, from anywhere; the version; a wheel installed outside the repository ----------------

REPOSITORY = pathlib.Path(__file__).parents[1]


def test_configs_lists_every_shipped_config(capsys):
    assert cli.main(["configs"]) == 0
    printed = capsys.readouterr().out
    for path in (REPOSITORY / "configs").glob("*.yaml"):
        line = next(line for line in printed.splitlines() if line.startswith(path.stem + " "))
        assert len(line.split(None, 1)[1]) > 20, line  # a description, not only the name


def test_a_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from amcl_keras import config as config_lib

    expected = config_lib.load(str(REPOSITORY / "configs" / "moco_demo.yaml")).to_dict()
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for given in ("moco_demo", "moco_demo.yaml", "configs/moco_demo.yaml"):
        assert config_lib.load(given).to_dict() == expected, given
    other = next(name for name in helpers.SHIPPED_METHODS if name != expected["model"]["method"])
    (tmp_path / "moco_demo.yaml").write_text(f"model:\n  method: {other}\n")  # a file of that name wins over the name
    assert config_lib.load("moco_demo.yaml").model.method == other


def test_version(capsys):
    import amcl_keras

    with pytest.raises(SystemExit) as raised:
        cli.main(["--version"])
    assert raised.value.code == 0 and capsys.readouterr().out.strip() == f"amcl-keras {amcl_keras.__version__}"


@pytest.mark.slow
def test_the_built_wheel_trains_a_named_config_and_exports_from_an_empty_folder(tmp_path):
    """`pip wheel` of this repository, installed (without dependencies: they are this environment's) into a folder
    of its own and put first on the path, run from an empty folder: the configs ship inside the wheel."""
    wheels, target, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPOSITORY)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("amcl_keras-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    environment = {**os.environ, "PYTHONPATH": str(target)}

    def amcl(*arguments):  # the wheel's own console script (its entry point is amcl_keras_entry:main)
        completed = subprocess.run([str(target / "bin" / "amcl"), *arguments], cwd=empty, env=environment,
                                   capture_output=True, text=True, timeout=900)
        assert completed.returncode == 0, completed.stderr[-3000:]
        return completed

    where = subprocess.run([sys.executable, "-c", "import amcl_keras; print(amcl_keras.__file__)"], cwd=empty,
                           env=environment, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target)), where  # the wheel's copy, not this checkout
    assert "moco_demo" in amcl("configs").stdout
    amcl("train", "--config", "moco_demo", "--epochs", "1", "--steps-per-epoch", "2", "--run-dir", "run",
         "--set", "eval.probe_epochs=1", "--set", "eval.max_examples=200", "--set", "export.formats=[]")
    amcl("export", "run", "--formats", "onnx")
    assert (empty / "run" / "export" / "encoder.onnx").is_file()
    amcl("embed", "run/export/encoder.onnx", "--dataset", "fashion_mnist_subset", "--max-examples", "50", "--out", "e.npy")
    assert (empty / "e.npy").is_file() and (empty / "e.csv").is_file()


def test_the_version_is_written_once():
    """pyproject.toml reads it from amcl_keras.__version__; the CHANGELOG has an entry for it."""
    import amcl_keras

    pyproject = (REPOSITORY / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and 'attr = "amcl_keras.__version__"' in pyproject
    assert "\nversion = " not in pyproject.split("[tool.setuptools.dynamic]")[0]
    assert f"## {amcl_keras.__version__} " in (REPOSITORY / "CHANGELOG.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("arguments", [["--help"], ["train", "--help"], ["export", "--help"], ["--version"], ["configs"]],
                         ids=["help", "train-help", "export-help", "version", "configs"])
def test_the_amcl_command_answers_help_without_importing_tensorflow(arguments):
    """The console script's entry point (pyproject [project.scripts]) defers the package's TensorFlow import; the
    child reports which heavy modules it imported by the time the command returned."""
    probe = ("import sys, amcl_keras_entry\n"
             "try:\n    code = amcl_keras_entry.main(sys.argv[1:])\nexcept SystemExit as exit:\n    code = exit.code\n"
             "print('IMPORTED', sorted(m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules), code)")
    environment = {k: v for k, v in os.environ.items() if k != amcl_keras.DEFER_ENVIRONMENT_VARIABLE}
    completed = subprocess.run([sys.executable, "-c", probe, *arguments], capture_output=True, text=True, timeout=120,
                               env=environment, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "IMPORTED [] 0", completed.stdout[-500:]
    assert completed.stdout.count("usage: amcl") == (1 if "--help" in arguments else 0)


def test_the_deferred_command_still_trains_and_the_deferral_is_not_inherited(tmp_path, monkeypatch):
    """Through the entry point a command loads the package after parsing (methods and layers registered), and the
    environment variable that deferred it is gone again (a process the command starts imports amcl_keras fully)."""
    probe = ("import os, sys, amcl_keras_entry\n"
             "code = amcl_keras_entry.main(sys.argv[1:])\n"
             "import amcl_keras\n"
             "print('STATE', code, amcl_keras._loaded, sorted(amcl_keras.registry.names()),"
             " os.environ.get(amcl_keras.DEFER_ENVIRONMENT_VARIABLE))")
    completed = subprocess.run([sys.executable, "-c", probe, "train", "--run-dir", str(tmp_path / "r"), *REDUCED,
                               ], capture_output=True, text=True, timeout=600,
                               cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr[-3000:]
    expected = f"STATE 0 True {sorted(helpers.SHIPPED_METHODS)} None"  # every shipped method registered
    assert completed.stdout.strip().splitlines()[-1] == expected, completed.stdout[-800:]
    assert (tmp_path / "r" / "encoder.keras").exists()
