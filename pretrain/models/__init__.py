"""Encoders and heads."""

from .decoder import SpatialDecoder
from .encoder import ARCHS, ResNetEncoder, build_encoder
from .heads import HypercolumnHead, MLPHead

__all__ = ["ARCHS", "HypercolumnHead", "MLPHead", "ResNetEncoder", "SpatialDecoder", "build_encoder"]
