"""Backbones and ROI heads for flowssl encoders, built from detectron2's own ResNet blocks.

The encoder's torchvision layout maps to detectron2's ResNet with ``STRIDE_IN_1X1=False`` and, for
a dilated stage, torchvision's dilation pattern (first block d/2, the rest d) through
``dilation_per_block``. ``flowssl convert --to detectron2`` writes matching names.
"""

from __future__ import annotations

from typing import Any

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

from pretrain.readout import ARCH_BLOCKS, d2_arch_error


def _blocks(cfg: Any) -> tuple[int, ...]:
    arch = cfg.MODEL.FLOWSSL.ARCH
    if d2_arch_error(arch):
        raise KeyError(f"MODEL.FLOWSSL.ARCH: {d2_arch_error(arch)}")
    return ARCH_BLOCKS[arch]


def _norm(cfg: Any) -> str:
    return "FrozenBN" if cfg.MODEL.FLOWSSL.FROZEN else cfg.MODEL.RESNETS.NORM


def make_stage(index: int, num_blocks: int, dilation: int, norm: str) -> list[nn.Module]:
    """res{index} (2..5) with torchvision's stride/dilation convention."""
    width = 64 * 2 ** (index - 2)
    stride = 1 if index == 2 or dilation > 1 else 2
    dilations = [max(1, dilation // 2)] + [dilation] * (num_blocks - 1) if dilation > 1 else [1] * num_blocks
    return ResNet.make_stage(
        BottleneckBlock, num_blocks, stride_per_block=[stride] + [1] * (num_blocks - 1),
        dilation_per_block=dilations, in_channels=64 if index == 2 else width * 2, bottleneck_channels=width,
        out_channels=width * 4, num_groups=1, norm=norm, stride_in_1x1=False)


def build_resnet(cfg: Any, stages: int, dilations: dict[int, int], out_features: list[str]) -> ResNet:
    norm = _norm(cfg)
    blocks = _blocks(cfg)
    stem = BasicStem(in_channels=3, out_channels=64, norm=norm)
    layers = [make_stage(i, blocks[i - 2], dilations.get(i, 1), norm) for i in range(2, 2 + stages)]
    net = ResNet(stem, layers, out_features=out_features)
    if cfg.MODEL.FLOWSSL.FROZEN:
        net.freeze(stages + 1)  # stem and every stage
    return net


@BACKBONE_REGISTRY.register()
def build_flowssl_resnet_backbone(cfg: Any, input_shape: ShapeSpec) -> Backbone:
    """ResNet-C4 trunk (stem, res2–res4); res5 lives in :class:`FlowsslRes5ROIHeads`."""
    return build_resnet(cfg, 3, {4: cfg.MODEL.FLOWSSL.RES4_DILATION}, ["res4"])


@BACKBONE_REGISTRY.register()
def build_flowssl_resnet_fpn_backbone(cfg: Any, input_shape: ShapeSpec) -> Backbone:
    """ResNet-FPN (heavy readout): standard strides — FPN needs one stride per level; the weights are
    the same as the dilated encoder's. Frozen: the bottom-up trunk is frozen, FPN and heads train."""
    bottom_up = build_resnet(cfg, 4, {}, ["res2", "res3", "res4", "res5"])
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@ROI_HEADS_REGISTRY.register()
class FlowsslRes5ROIHeads(Res5ROIHeads):
    """Res5ROIHeads whose res5 follows the encoder (block count, dilation) and is frozen with the rest
    of the encoder in the frozen readout — ``MODEL.BACKBONE.FREEZE_AT`` does not reach it."""

    @classmethod
    def _build_res5_block(cls, cfg: Any) -> tuple[nn.Module, int]:
        res5 = nn.Sequential(*make_stage(5, _blocks(cfg)[3], cfg.MODEL.FLOWSSL.RES5_DILATION, _norm(cfg)))
        if cfg.MODEL.FLOWSSL.FROZEN:
            for p in res5.parameters():
                p.requires_grad_(False)
            res5 = FrozenBatchNorm2d.convert_frozen_batchnorm(res5)
        return res5, 2048
