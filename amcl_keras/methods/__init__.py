"""Methods by name: `get("simclr")`. One file per method, on the shared `ContrastiveTrainer`."""

from amcl_keras.methods.base import ContrastiveTrainer
from amcl_keras.methods.simclr import SimCLR

METHODS = {"simclr": SimCLR}


def get(name):
    """The method class registered under `name`."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}. Known methods: {sorted(METHODS)}.")
    return METHODS[name]


__all__ = ["ContrastiveTrainer", "SimCLR", "METHODS", "get"]
