"""SimCLR/BYOL photometric augmentation and BYOL's random-resized-crop views (transforms.v2)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)


def photometric(blur_p: float, solarize_p: float, size: tuple[int, int],
                jitter: tuple[float, float, float, float] = BYOL_JITTER) -> v2.Compose:
    """Colour jitter (p 0.8), greyscale (p 0.2), Gaussian blur (kernel ≈ 10% of the image side,
    σ ∈ [0.1, 2]) and solarisation, as SimCLR/BYOL. BYOL's two views differ only in blur/solarize
    probabilities; SimCLR uses jitter (0.8, 0.8, 0.8, 0.2) and blur p 0.5."""
    k = max(3, int(0.1 * min(size)) // 2 * 2 + 1)
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(*jitter)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=blur_p),
        v2.RandomApply([v2.RandomSolarize(0.5)], p=solarize_p) if solarize_p else v2.Identity(),
    ])


def normalize() -> v2.Normalize:
    return v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)


class BYOLViews:
    """Two views of one image: random resized crop + flip, then the asymmetric photometric pair."""

    def __init__(self, size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0)) -> None:
        aspect = size[1] / size[0]
        crop = v2.Compose([v2.RandomResizedCrop(size, scale=scale, ratio=(0.75 * aspect, 4 / 3 * aspect),
                                                antialias=True),
                           v2.RandomHorizontalFlip()])
        self.view1 = v2.Compose([crop, photometric(1.0, 0.0, size), normalize()])
        self.view2 = v2.Compose([crop, photometric(0.1, 0.2, size), normalize()])

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"view1": self.view1(image), "view2": self.view2(image)}
