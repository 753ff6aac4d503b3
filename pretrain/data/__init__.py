"""Pretraining data: the embedded synthetic video, augmentations and trainer datasets."""

from .datasets import SyntheticFrames, sample_seed
from .frames import ImageFolderViews
from .synthetic import CLASSES, MovingShapesVideo, write_cityscapes_layout

__all__ = [
    "CLASSES", "ImageFolderViews", "MovingShapesVideo", "SyntheticFrames", "sample_seed", "write_cityscapes_layout",
]
