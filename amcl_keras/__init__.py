"""amcl-keras: Adaptive Multi-Head Contrastive Learning (ECCV 2024) for Keras 3 / TensorFlow."""

import contextlib
import os
import sys

# TensorFlow's C++ info and warning lines (grappler cost-model chatter on every epoch) drown
# the progress bars; errors still show. Set TF_CPP_MIN_LOG_LEVEL yourself to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# AMCL_VERBOSE=1 shows what the quiet start hides: TensorFlow's C++ start-up lines.
VERBOSE = os.environ.get("AMCL_VERBOSE", "").lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def _start_up_lines_hidden():
    """TensorFlow's C++ start-up lines (absl's "All log messages before absl::InitializeLog()", oneDNN's notice)
    are written to file descriptor 2 while it is imported, before TF_CPP_MIN_LOG_LEVEL applies: send them to
    /dev/null for the import only. Python errors raised by the import still show (after the descriptor is back)."""
    if VERBOSE or "tensorflow" in sys.modules:
        yield
        return
    try:
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no file descriptor 2 to redirect (an embedded interpreter): nothing to hide
        yield
        return
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


__version__ = "0.2.0"  # the one place the version is written (pyproject reads it; CHANGELOG.md)

# The `amcl` command (amcl_keras_entry.main) sets this while it imports `amcl_keras.cli`, so that `amcl --help`
# answers without TensorFlow; the command then calls `load()` before it does any work.
DEFER_ENVIRONMENT_VARIABLE = "AMCL_KERAS_DEFER_TENSORFLOW"

_PUBLIC_MODULES = ("augment", "autotune", "backups", "callbacks", "config", "constants", "data", "embedding", "encoders", "errors",
                   "evaluation", "export", "losses", "methods", "nonfinite", "optimizers", "registry", "runs")
_loaded = False


def load():
    """Import TensorFlow (quietly, see `_start_up_lines_hidden`) and every module of the package, which registers
    the methods and the Keras-serialisable layers (`keras.saving.load_model("encoder.keras")` needs them).
    `import amcl_keras` does this itself; only the `amcl` command defers it until its arguments are parsed."""
    global _loaded
    if _loaded:
        return
    with _start_up_lines_hidden():
        import tensorflow  # noqa: F401 (first, quietly; the modules below import it)

    import importlib

    for name in _PUBLIC_MODULES:
        importlib.import_module(f"amcl_keras.{name}")
    from amcl_keras.distribute import enable_determinism
    from amcl_keras.heads import MultiHeadPredictor, MultiHeadProjector, ProjectionHead
    from amcl_keras.methods import BarlowTwins, ContrastiveTrainer, MoCo, SimCLR, SimSiam
    from amcl_keras.temperature import AdaptiveTemperature, omega

    globals().update({name: value for name, value in locals().items() if name in __all__})
    _loaded = True


def __getattr__(name):
    """Only reached before `load()` (the `amcl` command's deferred start): a submodule is imported alone (this is
    also how `from amcl_keras import config` finds it), a class or function loads the package first."""
    if name in _PUBLIC_MODULES:
        import importlib

        return importlib.import_module(f"amcl_keras.{name}")
    if name in __all__ and not _loaded:
        load()
        return globals()[name]
    raise AttributeError(f"module 'amcl_keras' has no attribute {name!r}")


__all__ = [
    "AdaptiveTemperature",
    "BarlowTwins",
    "MoCo",
    "SimSiam",
    "ContrastiveTrainer",
    "MultiHeadPredictor",
    "MultiHeadProjector",
    "ProjectionHead",
    "SimCLR",
    "augment",
    "autotune",
    "backups",
    "callbacks",
    "config",
    "constants",
    "data",
    "embedding",
    "enable_determinism",
    "encoders",
    "errors",
    "evaluation",
    "export",
    "losses",
    "methods",
    "nonfinite",
    "omega",
    "optimizers",
    "registry",
    "runs",
]


if os.environ.get(DEFER_ENVIRONMENT_VARIABLE) != "1":
    load()
