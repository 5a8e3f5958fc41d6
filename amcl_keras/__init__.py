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


with _start_up_lines_hidden():
    import tensorflow  # noqa: E402, F401 (first, quietly; the modules below import it)

from amcl_keras import (  # noqa: E402
    augment, autotune, callbacks, config, constants, data, encoders, errors, evaluation, export, losses, methods, optimizers, registry,
    runs,
)
from amcl_keras.heads import MultiHeadPredictor, MultiHeadProjector, ProjectionHead
from amcl_keras.methods import BarlowTwins, ContrastiveTrainer, MoCo, SimCLR, SimSiam
from amcl_keras.distribute import enable_determinism
from amcl_keras.temperature import AdaptiveTemperature, omega

__version__ = "0.2.0"  # the one place the version is written (pyproject reads it; CHANGELOG.md)
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
    "callbacks",
    "config",
    "constants",
    "data",
    "enable_determinism",
    "encoders",
    "errors",
    "evaluation",
    "export",
    "losses",
    "methods",
    "omega",
    "optimizers",
    "registry",
    "runs",
]
