"""Pretraining objectives, registered in :data:`pretrain.registry.OBJECTIVES`."""

from .base import BootstrapObjective
from .byol import BYOL
from .crosspixel import CrossPixelFlowSimilarity, FlowClassification
from .fixed import ImageNetSupervised, RandInit
from .flowe import FlowE
from .oracle import Oracle
from .poodle import PooDLe
from .s3 import S3Affine, S3Entropy

__all__ = [
    "BYOL", "BootstrapObjective", "CrossPixelFlowSimilarity", "FlowClassification", "FlowE", "ImageNetSupervised",
    "Oracle", "PooDLe", "RandInit", "S3Affine", "S3Entropy",
]
