"""Encoders and heads."""

from .encoder import ARCHS, ResNetEncoder, build_encoder
from .heads import MLPHead

__all__ = ["ARCHS", "MLPHead", "ResNetEncoder", "build_encoder"]
