"""The supervised ceiling of issue 23 ("oracle"): the same encoder, data and budget as the
self-supervised demos, trained on the pretraining videos' own semantic labels.

Without a ceiling nobody can tell a weak method from a weak benchmark: if the oracle, frozen and read
out like every method, scores low, the world or the budget cannot reward good features. A 1×1 conv
head on the encoder's stride-8 map predicts the classes; the loss is the per-pixel cross-entropy of
each pixel's label against its 8×8 cell's logits (:func:`~pretrain.losses.cell_cross_entropy_loss`),
plain by default (``class_weights`` weights it per class). The head is not part of the encoder, so a
checkpoint converts and reads out like any other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..losses import cell_cross_entropy_loss
from ..readout import SYNTHETIC_CLASSES
from ..registry import OBJECTIVES
from .base import Objective


@OBJECTIVES.register_module(name="oracle")
class Oracle(Objective):
    """``batch`` holds ``image`` [B,3,H,W] and its semantic ``label`` [B,H,W] (``SyntheticFrames`` with
    ``labels=True``); ``num_classes`` defaults to the synthetic world's six."""

    method = "oracle"

    def __init__(self, encoder: dict[str, Any], num_classes: int = len(SYNTHETIC_CLASSES),
                 class_weights: list[float] | None = None) -> None:
        super().__init__(encoder)
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"model.class_weights has {len(class_weights)} values for {num_classes} classes")
        self.head = nn.Conv2d(self.encoder.out_channels, num_classes, 1)
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "label" not in batch:
            raise KeyError("the oracle trains on labels: use data=dict(type='SyntheticFrames', labels=True)")
        logits = self.head(self.encoder(batch["image"]))
        return {"loss": cell_cross_entropy_loss(logits, batch["label"], self.class_weights)}
