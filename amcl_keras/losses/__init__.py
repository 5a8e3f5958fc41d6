"""Losses: pure functions of embeddings, one file per method family (baseline + AMCL variant)."""

from amcl_keras.losses.barlow_twins import AMCLBarlowTwinsLoss, BarlowTwinsLoss
from amcl_keras.losses.infonce import AMCLInfoNCELoss, InfoNCELoss
from amcl_keras.losses.ntxent import AMCLNTXentLoss, NTXentLoss
from amcl_keras.losses.simsiam import AMCLSimSiamLoss, SimSiamLoss

__all__ = [
    "NTXentLoss",
    "AMCLNTXentLoss",
    "InfoNCELoss",
    "AMCLInfoNCELoss",
    "BarlowTwinsLoss",
    "AMCLBarlowTwinsLoss",
    "SimSiamLoss",
    "AMCLSimSiamLoss",
]
