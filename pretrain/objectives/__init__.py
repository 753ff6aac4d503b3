"""Pretraining objectives, registered in :data:`pretrain.registry.OBJECTIVES`."""

from .base import BootstrapObjective
from .byol import BYOL
from .flowe import FlowE

__all__ = ["BYOL", "BootstrapObjective", "FlowE"]
