"""Encoders and heads."""

from .encoder import ARCHS, ResNetEncoder, build_encoder
from .heads import HypercolumnHead, MLPHead

__all__ = ["ARCHS", "HypercolumnHead", "MLPHead", "ResNetEncoder", "build_encoder"]
