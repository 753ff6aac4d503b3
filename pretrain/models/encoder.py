"""The encoder f: a torchvision ResNet, dilated to output stride 8 (FlowE §3.3).

We subclass torchvision's ResNet instead of writing one, so the state-dict keys are torchvision's
(``conv1``, ``bn1``, ``layer1.0.conv1`` ...). Conversion to detectron2 / mmseg is then a pure rename.
The layouts are :data:`pretrain.readout.ARCH_SPECS`: torchvision's bottleneck ResNets, and narrow
ones of basic blocks (torchvision's ``BasicBlock`` and ``ResNet._make_layer`` at other widths).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..readout import ARCH_SPECS


class DilatedBasicBlock(BasicBlock):
    """torchvision's ``BasicBlock`` (same modules and names), whose first 3×3 conv may be dilated —
    torchvision refuses dilation in basic blocks. Only conv1 dilates, as mmseg's (and mmcv's)
    ``BasicBlock``, so the MMSegmentation readout computes the same features."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, norm_layer: Any = None) -> None:
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, 1, norm_layer)
        self.conv1.dilation = self.conv1.padding = (dilation, dilation)


# the archs every readout builds too (one table, pretrain.readout.ARCH_SPECS)
_BLOCK = {"bottleneck": Bottleneck, "basic": DilatedBasicBlock}
ARCHS: dict[str, tuple[type[nn.Module], list[int]]] = {arch: (_BLOCK[s.block], list(s.blocks))
                                                        for arch, s in ARCH_SPECS.items()}

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
        spec = ARCH_SPECS[arch]
        if spec.width == 64:  # torchvision's own constructor: the same initial weights for a seed
            super().__init__(block, layers, replace_stride_with_dilation=_DILATION[output_stride],
                             zero_init_residual=zero_init_residual)
            del self.avgpool, self.fc
        else:
            self._build_narrow(block, layers, spec.width, _DILATION[output_stride], zero_init_residual)
        self.arch = arch
        self.output_stride = output_stride
        self.out_channels = spec.out_channels
        self.stage_channels = spec.stage_channels

    def _build_narrow(self, block: type[nn.Module], layers: list[int], width: int, dilate: list[bool],
                      zero_init_residual: bool) -> None:
        """torchvision's ``ResNet.__init__`` at stem/layer1 width ``width`` instead of 64 (which it fixes):
        the same stem, ``_make_layer`` stages and initialisation, no classifier."""
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        for i in range(1, 4):
            setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2 ** i, layers[i], stride=2,
                                                             dilate=dilate[i - 1]))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

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


__all__ = ["ARCHS", "STAGES", "BasicBlock", "Bottleneck", "DilatedBasicBlock", "ResNetEncoder", "build_encoder"]
