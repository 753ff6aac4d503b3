"""BYOL's projector/predictor MLP as 1×1 convolutions (FlowE §3.3).

A 1×1 convolution on a 1×1 map is exactly BYOL's Linear, so one head serves the global objective
(pool first) and the dense ones (keep the map) with the same parameter count.
"""

from __future__ import annotations

from torch import nn


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
