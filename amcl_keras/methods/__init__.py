"""Methods by name: `get("simclr" | "moco" | "barlow_twins" | "simsiam")`.

One file per method, each only what is specific to it, on the shared `ContrastiveTrainer`.
"""

from amcl_keras.methods.barlow_twins import BarlowTwins
from amcl_keras.methods.base import ENCODER_FORWARDS, ContrastiveTrainer
from amcl_keras.methods.moco import MOCO_FORMS, MoCo
from amcl_keras.methods.simclr import SimCLR
from amcl_keras.methods.simsiam import SimSiam

METHODS = {"simclr": SimCLR, "moco": MoCo, "barlow_twins": BarlowTwins, "simsiam": SimSiam}


def get(name):
    """The method class registered under `name`."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}. Known methods: {sorted(METHODS)}.")
    return METHODS[name]


__all__ = ["BarlowTwins", "ContrastiveTrainer", "MoCo", "SimCLR", "SimSiam", "METHODS", "ENCODER_FORWARDS",
           "MOCO_FORMS", "get"]
