"""PooDLe's Spatial Decoder Module (Wang et al., ICLR 2025, §3; reference code ``src/models/poodle.py``).

A light top-down, UNet-like path over the encoder's last three stages: starting from layer4, each
step refines the map with one torchvision ``Bottleneck``, upsamples it bilinearly to the next finer
stage and adds a 1×1 lateral projection of that stage. With a standard (stride-32) ResNet the
output sits on layer2's stride-8 grid, where the dense flow-equivariance loss is computed — so
small objects keep their pixels without dilating the encoder. Pretraining-only, like the heads:
checkpoints export the encoder alone.

Grid: bilinear upsampling with ``align_corners=False`` maps cell centres s·k + (s − 1)/2 of one
stage onto those of the next, the convention :func:`pretrain.geometry.view_flow` uses for its
stride-s grid, so the decoder's output cells are the cells the loss warps (a test checks it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

DECODER_STAGES = ("layer2", "layer3", "layer4")


class SpatialDecoder(nn.Module):
    """Top-down: z = layer4; for each finer stage C: z = up(Bottleneck(z)) + lateral(C).

    ``channels`` is the width of the path (2048 in PooDLe, layer4's width), ``hidden_factor`` the
    bottleneck's inner width relative to ``channels / 4`` (0.5: 2048 → 256 → 2048, the reference's
    ``decoder_hidden_dim_factor``). Laterals are plain 1×1 convolutions with bias, no norm.
    """

    def __init__(self, stage_channels: dict[str, int], channels: int = 2048, hidden_factor: float = 0.5,
                 stages: tuple[str, ...] = DECODER_STAGES) -> None:
        super().__init__()
        if len(stages) < 2:
            raise ValueError(f"the decoder needs at least two stages (coarse to fine input), got {stages}")
        if channels % 4:
            raise ValueError(f"decoder channels must be divisible by 4 (bottleneck expansion), got {channels}")
        self.stages = tuple(stages)
        *finer, coarsest = self.stages
        self.top = (nn.Conv2d(stage_channels[coarsest], channels, 1)
                    if stage_channels[coarsest] != channels else nn.Identity())
        self.blocks = nn.ModuleList(Bottleneck(channels, channels // 4, base_width=round(64 * hidden_factor))
                                    for _ in finer)
        self.laterals = nn.ModuleList(nn.Conv2d(stage_channels[s], channels, 1) for s in reversed(finer))
        self.out_channels = channels

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``feats``: stage name → map (``ResNetEncoder.forward_stages``); returns the finest stage's grid."""
        *finer, coarsest = self.stages
        z = self.top(feats[coarsest])
        for block, lateral, name in zip(self.blocks, self.laterals, reversed(finer), strict=True):
            c = feats[name]
            z = F.interpolate(block(z), size=c.shape[-2:], mode="bilinear", align_corners=False) + lateral(c)
        return z
