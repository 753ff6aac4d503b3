"""Pretraining data: the embedded synthetic video, augmentations and trainer datasets."""

from .datasets import SyntheticFrames, sample_seed
from .frames import ImageFolderViews
from .pairs import CityscapesSequencePairs, FrameFolderPairs, SyntheticPairs, VideoPairs
from .synthetic import CLASSES, MovingShapesVideo, write_cityscapes_layout
from .world_v3 import ShapeFamiliesVideo

__all__ = [
    "CLASSES", "CityscapesSequencePairs", "FrameFolderPairs", "ImageFolderViews", "MovingShapesVideo",
    "ShapeFamiliesVideo", "SyntheticFrames", "SyntheticPairs", "VideoPairs", "sample_seed", "write_cityscapes_layout",
]
