"""The FlowE standard readout header: DeepLab v1 reduced to one 1×1 convolution (§4.2, Table 6)."""

from __future__ import annotations

from typing import Any

import torch
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS


@MODELS.register_module()
class DeepLabV1Head(BaseDecodeHead):
    """Per-pixel logits from the OS8 features by a single 1×1 convolution (``conv_seg``); nothing
    else is trainable, mimicking the linear protocol of image SSL."""

    def __init__(self, in_channels: int = 2048, dropout_ratio: float = 0.0, **kwargs: Any) -> None:
        super().__init__(in_channels=in_channels, channels=in_channels, dropout_ratio=dropout_ratio, **kwargs)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self._transform_inputs(inputs))
