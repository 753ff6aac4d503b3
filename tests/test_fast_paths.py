"""The data pipeline's fast paths compute what the straightforward versions compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from pretrain.data.augment import GaussianBlur
from pretrain.data.pairs import resized_crop


@pytest.mark.parametrize("size", [(108, 192), (90, 160), (72, 128), (60, 100)])  # enlarge, keep, shrink
def test_resized_crop_equals_resize_then_crop(size):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 72, 128)
    box = (5, 7, 48, 80)
    ref = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)[..., 5:53, 7:87]
    torch.testing.assert_close(resized_crop(x, size, box), ref, rtol=0, atol=2e-5)
    mask = torch.rand(2, 1, 72, 128) > 0.5
    ref_mask = F.interpolate(mask.float(), size, mode="nearest")[..., 5:53, 7:87] > 0.5
    assert torch.equal(resized_crop(mask, size, box, "nearest"), ref_mask)


@pytest.mark.parametrize(("kernel", "sigma"), [(51, 1.7), (5, 0.3), (11, 2.0)])
def test_opencv_gaussian_blur_equals_torchvision(kernel, sigma):
    x = torch.rand(3, 64, 128)
    ref = v2.functional.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    torch.testing.assert_close(GaussianBlur(kernel).transform(x, {"sigma": [sigma, sigma]}), ref, rtol=0, atol=5e-6)


def test_gaussian_blur_samples_sigma_like_torchvision():
    x = torch.rand(3, 32, 64)
    torch.manual_seed(3)
    ours = GaussianBlur(9, sigma=(0.1, 2.0))(x)
    torch.manual_seed(3)
    ref = v2.GaussianBlur(9, sigma=(0.1, 2.0))(x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=5e-6)
