"""The encoder f: a torchvision ResNet, dilated to output stride 8 (FlowE §3.3).

We subclass torchvision's ResNet instead of writing one, so the state-dict keys are torchvision's
(``conv1``, ``bn1``, ``layer1.0.conv1`` ...). Conversion to detectron2 / mmseg is then a pure rename.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..readout import ARCH_BLOCKS

# the archs every readout builds too (one table, pretrain.readout.ARCH_BLOCKS): torchvision bottlenecks
ARCHS: dict[str, tuple[type[nn.Module], list[int]]] = {arch: (Bottleneck, list(b)) for arch, b in ARCH_BLOCKS.items()}

# replace_stride_with_dilation for layer2..layer4 per output stride.
_DILATION = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class ResNetEncoder(ResNet):
    """torchvision ResNet without global pooling and classifier; returns the layer4 feature map."""

    def __init__(self, arch: str = "resnet50", output_stride: int = 8, zero_init_residual: bool = False) -> None:
        if arch not in ARCHS:
            raise KeyError(f"unknown encoder arch '{arch}'; choose one of {sorted(ARCHS)}")
        if output_stride not in _DILATION:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        block, layers = ARCHS[arch]
        super().__init__(block, layers, replace_stride_with_dilation=_DILATION[output_stride],
                         zero_init_residual=zero_init_residual)
        del self.avgpool, self.fc
        self.arch = arch
        self.output_stride = output_stride
        self.out_channels = 512 * (4 if block is Bottleneck else 1)
        self.stage_channels = {"stem": 64, **{f"layer{i + 1}": c * (4 if block is Bottleneck else 1)
                                              for i, c in enumerate((64, 128, 256, 512))}}

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All stage outputs, for hypercolumns and for the cross-framework equivalence tests."""
        out: dict[str, torch.Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out["stem"] = x
        for name in STAGES[1:]:
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    @property
    def meta(self) -> dict[str, Any]:
        return {"arch": self.arch, "output_stride": self.output_stride}


def build_encoder(arch: str = "resnet50", output_stride: int = 8, **kwargs: Any) -> ResNetEncoder:
    from ..config import check_kwargs

    check_kwargs(ResNetEncoder, {"arch": arch, "output_stride": output_stride, **kwargs}, "model.encoder")
    return ResNetEncoder(arch=arch, output_stride=output_stride, **kwargs)


__all__ = ["ARCHS", "STAGES", "BasicBlock", "Bottleneck", "ResNetEncoder", "build_encoder"]
