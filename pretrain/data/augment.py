"""SimCLR/BYOL photometric augmentation and BYOL's random-resized-crop views (transforms.v2)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..readout import IMAGENET_MEAN, IMAGENET_STD

BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)


class GaussianBlur(v2.GaussianBlur):
    """``v2.GaussianBlur`` (same σ sampling, same kernel, same reflect borders) whose filtering of a
    CPU float image runs as OpenCV's separable filter: torchvision convolves with the full 2-D
    kernel, and SimCLR's kernel is 10 % of the image side — 51×51 at 512×1024, 0.35 s per view on
    one core against 0.013 s (benchmarks/data_pipeline.py). Other inputs go to torchvision."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not (isinstance(inpt, torch.Tensor) and inpt.device.type == "cpu" and inpt.dtype == torch.float32
                and inpt.ndim == 3):
            return super().transform(inpt, params)
        kx = cv2.getGaussianKernel(self.kernel_size[0], params["sigma"][0], cv2.CV_32F)
        ky = cv2.getGaussianKernel(self.kernel_size[1], params["sigma"][1], cv2.CV_32F)
        hwc = np.ascontiguousarray(inpt.permute(1, 2, 0).numpy())
        out = cv2.sepFilter2D(hwc, -1, kx, ky, borderType=cv2.BORDER_REFLECT_101)
        out = torch.from_numpy(out.reshape(hwc.shape)).permute(2, 0, 1).contiguous()
        return tv_tensors.wrap(out, like=inpt) if type(inpt) is not torch.Tensor else out


def photometric(blur_p: float, solarize_p: float, size: tuple[int, int],
                jitter: tuple[float, float, float, float] = BYOL_JITTER) -> v2.Compose:
    """Colour jitter (p 0.8), greyscale (p 0.2), Gaussian blur (kernel ≈ 10% of the image side,
    σ ∈ [0.1, 2]) and solarisation, as SimCLR/BYOL. BYOL's two views differ only in blur/solarize
    probabilities; SimCLR uses jitter (0.8, 0.8, 0.8, 0.2) and blur p 0.5."""
    k = max(3, int(0.1 * min(size)) // 2 * 2 + 1)
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(*jitter)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([GaussianBlur(k, sigma=(0.1, 2.0))], p=blur_p),
        v2.RandomApply([v2.RandomSolarize(0.5)], p=solarize_p) if solarize_p else v2.Identity(),
    ])


def normalize() -> v2.Normalize:
    return v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)


class BYOLViews:
    """Two views of one image: random resized crop + flip, then the asymmetric photometric pair."""

    def __init__(self, size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0)) -> None:
        aspect = size[1] / size[0]
        self.crop = v2.Compose([v2.RandomResizedCrop(size, scale=scale, ratio=(0.75 * aspect, 4 / 3 * aspect),
                                                     antialias=True),
                                v2.RandomHorizontalFlip()])
        self.colour1 = v2.Compose([photometric(1.0, 0.0, size), normalize()])
        self.view1 = v2.Compose([self.crop, self.colour1])
        self.view2 = v2.Compose([self.crop, photometric(0.1, 0.2, size), normalize()])

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"view1": self.view1(image), "view2": self.view2(image)}

    def labelled(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """View 1 of ``image`` [3,H,W] as ``image`` and its ``label`` map [H,W] cropped, resized and
        flipped with it — nearest-neighbour, as torchvision resizes a ``Mask`` (no new label values)."""
        view, mask = self.crop(tv_tensors.Image(image), tv_tensors.Mask(label))
        return {"image": self.colour1(view).as_subclass(torch.Tensor), "label": mask.as_subclass(torch.Tensor)}
