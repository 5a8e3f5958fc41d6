"""Methods by name: `get("simclr" | "moco" | "barlow_twins" | "simsiam")`.

One file per method, each only what is specific to it, on the shared `ContrastiveTrainer`; each
registers itself (name, display name, settings, default learning rate) with
`amcl_keras.registry.register_method`, and `METHODS` below is read from that registry. The
four built-in methods are also importable by name from here.
"""

import importlib
import pkgutil

from amcl_keras import registry
from amcl_keras.methods.barlow_twins import BarlowTwins, BarlowTwinsSettings
from amcl_keras.methods.base import ContrastiveTrainer, MethodSettings, StepLoss
from amcl_keras.methods.moco import MOCO_FORMS, KeyQueue, MoCo, MoCoSettings
from amcl_keras.methods.simclr import SimCLR, SimCLRSettings
from amcl_keras.methods.simsiam import SimSiam, SimSiamSettings

# Every module of this package is imported, so a new method file registers itself without an edit here.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

METHODS = registry.METHODS  # name -> MethodSpec (the model class is `.model`)


def get(name):
    """The model class registered as method `name` (ValueError naming the known methods otherwise)."""
    return registry.method(name).model


__all__ = ["BarlowTwins", "BarlowTwinsSettings", "ContrastiveTrainer", "KeyQueue", "MethodSettings", "MoCo",
           "MoCoSettings", "SimCLR", "SimCLRSettings", "SimSiam", "SimSiamSettings", "StepLoss", "METHODS",
           "MOCO_FORMS", "get"]
