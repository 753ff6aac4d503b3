"""Frames from disk (BDD100K frame dumps, UrbanCity-style folders) as BYOL views.

Bad files are skipped with a warning and counted; past ``max_bad_fraction`` the run stops with a
report, so a broken dataset fails loudly instead of silently training on a few good images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..registry import DATASETS
from .augment import BYOLViews
from .datasets import SeededDataset

log = logging.getLogger("flowssl")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


class BadDataError(RuntimeError):
    """Too many unreadable inputs."""


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; set data.root in the config "
                                "(or --cfg-options data.root=/path/to/frames)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def read_rgb(path: Path) -> torch.Tensor | None:
    """[3,H,W] float RGB in [0,1], or None when the file is unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1])).permute(2, 0, 1).float() / 255


class BadFileCounter:
    """Counts unreadable files per worker and raises past a fraction of the reads."""

    def __init__(self, max_bad_fraction: float) -> None:
        self.max_bad_fraction, self.reads, self.bad = max_bad_fraction, 0, 0

    def record(self, path: Path, ok: bool, reason: str = "unreadable file") -> None:
        self.reads += 1
        if ok:
            return
        self.bad += 1
        log.warning("skipping %s: %s (%d bad of %d reads)", path, reason, self.bad, self.reads)
        if self.reads >= 20 and self.bad / self.reads > self.max_bad_fraction:
            raise BadDataError(f"{self.bad} of {self.reads} files read were bad (last: {path}: {reason}), "
                               f"over data.max_bad_fraction={self.max_bad_fraction}; fix or remove those files, "
                               "or raise data.max_bad_fraction")


@DATASETS.register_module()
class ImageFolderViews(SeededDataset):
    """Every image under ``root`` treated like an ImageNet image (FlowE's plain "BYOL" row)."""

    def __init__(self, root: str, seed: int = 0, crop_size: tuple[int, int] = (512, 1024),
                 resize_to: tuple[int, int] | None = (1080, 1920), crop_scale: tuple[float, float] = (0.08, 1.0),
                 max_bad_fraction: float = 0.01) -> None:
        super().__init__(seed)
        self.files = list_images(root)
        self.resize_to = tuple(resize_to) if resize_to else None
        self.views = BYOLViews(tuple(crop_size), tuple(crop_scale))
        self.bad = BadFileCounter(max_bad_fraction)

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        for _ in range(100):
            path = self.files[int(rng.integers(len(self.files)))]
            img = read_rgb(path)
            self.bad.record(path, img is not None)
            if img is not None:
                break
        else:
            raise BadDataError(f"100 consecutive unreadable files under {path.parent}")
        if self.resize_to and tuple(img.shape[1:]) != self.resize_to:
            img = F.interpolate(img[None], self.resize_to, mode="bilinear", align_corners=False)[0]
        return self.views(img)
