"""Pretraining objectives, registered in :data:`pretrain.registry.OBJECTIVES`."""

from .base import BootstrapObjective
from .byol import BYOL

__all__ = ["BYOL", "BootstrapObjective"]
