"""BYOL's projector/predictor MLP as 1×1 convolutions (FlowE §3.3).

A 1×1 convolution on a 1×1 map is exactly BYOL's Linear, so one head serves the global objective
(pool first) and the dense ones (keep the map) with the same parameter count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import at_least_fp32, fp32_geometry


class MLPHead(nn.Sequential):
    """Conv1×1(in→hidden) → BN → ReLU → Conv1×1(hidden→out); BYOL uses hidden 4096, out 256."""

    def __init__(self, in_channels: int, hidden_channels: int = 4096, out_channels: int = 256) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden_channels, 1),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, out_channels, 1),
        )
        self.out_channels = out_channels


class HypercolumnHead(nn.Module):
    """Sparse hypercolumns (cross-pixel paper §3, §4.1): encoder stages sampled bilinearly at pixel
    locations, concatenated, and mapped by a one-hidden-layer MLP to a D-dim embedding.

    ResNet stages stand in for AlexNet's conv1/pool1/conv3/pool5/fc7.
    """

    def __init__(self, stage_channels: dict[str, int], stages: tuple[str, ...], hidden_channels: int = 256,
                 out_channels: int = 16) -> None:
        super().__init__()
        self.stages = tuple(stages)
        in_ch = sum(stage_channels[s] for s in self.stages)
        self.mlp = nn.Sequential(nn.Conv1d(in_ch, hidden_channels, 1), nn.BatchNorm1d(hidden_channels),
                                 nn.ReLU(inplace=True), nn.Conv1d(hidden_channels, out_channels, 1))
        self.out_channels = out_channels

    def hypercolumns(self, feats: dict[str, torch.Tensor], points: torch.Tensor,
                     image_size: tuple[int, int]) -> torch.Tensor:
        """The concatenated stage features [B, ΣC, N] at ``points`` [B,N,2] (x, y) image pixels, fp32.

        A stage of stride s sees pixel q at (q + ½)/s − ½ in its own grid (the
        ``align_corners=False`` convention). The grid and the sampling stay in fp32 under autocast:
        a bf16 grid in [−1, 1] moves in 2-px steps near the border of a 1024-px-wide image.
        """
        h, w = image_size
        with fp32_geometry():
            points = at_least_fp32(points)
            grid = torch.stack([(points[..., 0] + 0.5) / w * 2 - 1, (points[..., 1] + 0.5) / h * 2 - 1], -1)[:, None]
            cols = []
            for s in self.stages:
                f = at_least_fp32(feats[s])
                cols.append(F.grid_sample(f, grid.to(f.dtype), mode="bilinear", align_corners=False)[:, :, 0])
            return torch.cat(cols, 1)

    def forward(self, feats: dict[str, torch.Tensor], points: torch.Tensor,
                image_size: tuple[int, int]) -> torch.Tensor:
        """``points`` [B,N,2] (x, y) image pixel coordinates → [B, out, N] (the MLP follows autocast)."""
        return self.mlp(self.hypercolumns(feats, points, image_size))
