"""amcl-keras: Adaptive Multi-Head Contrastive Learning (ECCV 2024) for Keras 3 / TensorFlow."""

import os

# TensorFlow's C++ info and warning lines (grappler cost-model chatter on every epoch) drown
# the progress bars; errors still show. Set TF_CPP_MIN_LOG_LEVEL yourself to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
