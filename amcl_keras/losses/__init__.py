"""Losses: pure functions of embeddings, one file per method family."""

from amcl_keras.losses.ntxent import AMCLNTXentLoss, NTXentLoss

__all__ = ["NTXentLoss", "AMCLNTXentLoss"]
