"""S3-CNN (Mahendran et al. 2018): a soft segmentation of one image into L regions, supervised by
how coherently the flow moves inside each region (affine fit, or flow-magnitude entropy).

L follows the paper: 5 regions with the affine loss (its cube and Sintel experiments), 10 with the
entropy loss (YouTube Objects, trained on YFCC100m). The masks' softmax, the pooled flow, the least
squares and the histogram are fp32 whatever the autocast state (:mod:`pretrain.precision`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import affine_motion_loss, histogram_entropy_loss
from ..registry import OBJECTIVES
from .base import Objective
from .crosspixel import flow_in_view


class _S3(Objective):
    def __init__(self, encoder: dict[str, Any], num_regions: int) -> None:
        super().__init__(encoder)
        self.segment = nn.Conv2d(self.encoder.out_channels, num_regions, 1)

    def regions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Soft masks [B,L,h,w] at feature resolution with the view's flow (in feature pixels)
        average-pooled to the same grid and its validity."""
        masks = self.segment(self.encoder(batch["view1"])).float().softmax(1)
        flow, valid = flow_in_view(batch)  # fp32
        size = masks.shape[-2:]
        scale = size[-1] / flow.shape[-1]
        flow = F.adaptive_avg_pool2d(flow * valid[:, None], size) / F.adaptive_avg_pool2d(
            valid[:, None].float(), size).clamp(min=1e-6)
        valid = F.adaptive_avg_pool2d(valid[:, None].float(), size)[:, 0] > 0.5
        return masks, flow * scale, valid


@OBJECTIVES.register_module(name="s3_affine")
class S3Affine(_S3):
    """Affine motion loss; L = 5 as in the paper's affine experiments."""

    method = "s3_affine"

    def __init__(self, encoder: dict[str, Any], num_regions: int = 5) -> None:
        super().__init__(encoder, num_regions)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        masks, flow, valid = self.regions(batch)
        return {"loss": affine_motion_loss(masks, flow, valid), "valid_fraction": valid.float().mean()}


@OBJECTIVES.register_module(name="s3_entropy")
class S3Entropy(_S3):
    """Flow-magnitude histogram entropy; L = 10 as in the paper's YouTube experiment. ``bins`` is not
    given in the paper. The histogram range is ``max_magnitude`` (feature pixels) when set, else the
    ``range_quantile`` of each image's valid magnitudes — robust to outliers, unlike the maximum."""

    method = "s3_entropy"

    def __init__(self, encoder: dict[str, Any], num_regions: int = 10, bins: int = 16,
                 max_magnitude: float | None = None, range_quantile: float = 0.99) -> None:
        super().__init__(encoder, num_regions)
        self.bins, self.max_magnitude, self.range_quantile = bins, max_magnitude, range_quantile

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        masks, flow, valid = self.regions(batch)
        return {"loss": histogram_entropy_loss(masks, flow, valid, self.bins, self.max_magnitude,
                                               self.range_quantile), "valid_fraction": valid.float().mean()}
