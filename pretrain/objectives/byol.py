"""BYOL on single frames (Grill et al.; FlowE Table 1 "BYOL" rows)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..losses import byol_loss
from ..registry import OBJECTIVES
from .base import BootstrapObjective


@OBJECTIVES.register_module(name="byol")
class BYOL(BootstrapObjective):
    """Global BYOL: the encoder map is average-pooled to 1×1 before the 1×1-conv heads.

    ``batch`` holds two augmented views ``view1``/``view2`` of shape [B, 3, H, W]. With
    ``symmetric`` the loss is ℓ(p₁, z₂) + ℓ(p₂, z₁), as in BYOL.
    """

    method = "byol"

    def __init__(self, encoder: dict[str, Any], symmetric: bool = True, **kwargs: Any) -> None:
        super().__init__(encoder, **kwargs)
        self.symmetric = symmetric

    def _online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(F.adaptive_avg_pool2d(self.encoder(x), 1)))

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.target_projector(F.adaptive_avg_pool2d(self.target_encoder(x), 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v1, v2 = batch["view1"], batch["view2"]
        loss = byol_loss(self._online(v1), self._target(v2))
        if self.symmetric:
            loss = loss + byol_loss(self._online(v2), self._target(v1))
        return {"loss": loss}
