"""Cross-pixel optical-flow similarity (Mahendran et al. 2018) and its direct-classification baseline.

Both read one view and the flow at its pixels (the flow is used by the loss only, never by the
network), sample ``num_points`` pixels per image with valid flow, and build sparse hypercolumns.

Precision: the flow in the view, the sampled coordinates, the hypercolumn grid, the flow kernel,
its normalisation and the class bins are fp32 whatever the autocast state; only the encoder and
the MLP follow it (:mod:`pretrain.precision`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..geometry import view_flow
from ..losses import cross_pixel_similarity_loss, flow_bin_classification_loss, normalize_flow_log
from ..models import HypercolumnHead
from ..registry import OBJECTIVES
from .base import Objective

DEFAULT_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def flow_in_view(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-1 flow expressed at view-1 pixels: q₁ ↦ A₁(p₁ + M(p₁)) − q₁ with p₁ = A₁⁻¹q₁ (fp32)."""
    a1 = batch["affine1"]
    return view_flow(a1, a1, batch["flow_fw"], batch["valid_fw"], tuple(batch["view1"].shape[-2:]))


def sample_points(valid: torch.Tensor, num_points: int) -> torch.Tensor:
    """[B,N,2] integer (x, y) pixels drawn uniformly among valid ones (all pixels if none is valid)."""
    b, h, w = valid.shape
    weights = valid.flatten(1).float()
    weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))
    idx = torch.multinomial(weights, num_points, replacement=bool((weights.sum(1) < num_points).any()))
    return torch.stack([idx % w, idx // w], -1).float()


def gather_points(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] at integer pixel points [B,N,2] → [B,N,C]."""
    b, c, h, w = field.shape
    idx = (points[..., 1] * w + points[..., 0]).long()
    return torch.gather(field.flatten(2), 2, idx[:, None].expand(b, c, -1)).transpose(1, 2)


class _SparseFlowObjective(Objective):
    def __init__(self, encoder: dict[str, Any], head: dict[str, Any] | None = None, num_points: int = 512,
                 max_flow: float = 56.0, out_channels: int = 16) -> None:
        super().__init__(encoder)
        head = {"stages": DEFAULT_STAGES, "hidden_channels": 256, **(head or {})}
        self.head = HypercolumnHead(self.encoder.stage_channels, out_channels=out_channels, **head)
        self.num_points, self.max_flow = num_points, max_flow

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Head outputs [B,C,N] at sampled pixels and their normalised flow [B,N,2]."""
        return self.embed_with_valid(batch)[:2]

    def embed_with_valid(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`embed` and the fraction of view pixels with a valid flow: at 0 the points are drawn
        among invalid ones (nothing to learn from), and the trainer skips the step."""
        flow, valid = flow_in_view(batch)
        points = sample_points(valid, self.num_points)
        feats = self.encoder.forward_stages(batch["view1"])
        out = self.head(feats, points, tuple(batch["view1"].shape[-2:]))
        return out, normalize_flow_log(gather_points(flow, points), self.max_flow), valid.float().mean()


@OBJECTIVES.register_module(name="flow_similarity")
class CrossPixelFlowSimilarity(_SparseFlowObjective):
    """D = 16 L2-normalised embeddings whose cosine kernel must match the flow's RBF kernel (eq. 3);
    σ is learned (as log σ²), initialised at ``sigma2``."""

    method = "flow_similarity"

    def __init__(self, encoder: dict[str, Any], embedding_dim: int = 16, sigma2: float = 0.01, **kwargs: Any) -> None:
        super().__init__(encoder, out_channels=embedding_dim, **kwargs)
        self.log_sigma2 = nn.Parameter(torch.tensor(math.log(sigma2)))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        emb, flow, frac = self.embed_with_valid(batch)
        sigma2 = self.log_sigma2.exp()
        loss = cross_pixel_similarity_loss(emb.transpose(1, 2), flow, sigma2)  # fp32 inside
        return {"loss": loss, "sigma2": sigma2.detach(), "valid_fraction": frac}


@OBJECTIVES.register_module(name="flow_classification")
class FlowClassification(_SparseFlowObjective):
    """The paper's "direct optical-flow prediction" baseline (§4): per-pixel softmax cross-entropy
    over 16 uniform bins of each normalised flow component, x and y. (Its L² regression of flow
    vectors is the other baseline it mentions, which worked worse; it is not implemented.)"""

    method = "flow_classification"

    def __init__(self, encoder: dict[str, Any], bins: int = 16, **kwargs: Any) -> None:
        super().__init__(encoder, out_channels=2 * bins, **kwargs)
        self.bins = bins

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, flow, frac = self.embed_with_valid(batch)
        return {"loss": flow_bin_classification_loss(logits, flow, self.bins), "valid_fraction": frac}
