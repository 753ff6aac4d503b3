"""FlowE (Xiong et al., ICCV 2021): dense BYOL with flow equivariance (§3.2, Algorithm 1).

Precision: the encoder and heads follow the caller's autocast (bf16 on GPU); the composition of T,
the warp and eq. 5 run in fp32 on fp32 copies of p and z (:mod:`pretrain.precision`), so the loss
of an equivariant network is the same under bf16 as in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..flow.sources import FlowPair, build_flow_source
from ..flow.warp import warp
from ..geometry import view_flow
from ..losses import byol_loss, flowe_loss
from ..precision import fp32
from ..registry import OBJECTIVES
from .base import BootstrapObjective

LOSS_RESOLUTIONS = ("image", "feature")


@fp32
def equivariance_loss(p: torch.Tensor, z: torch.Tensor, aff_a: torch.Tensor, aff_b: torch.Tensor,
                      flow_ab: torch.Tensor, valid_ab: torch.Tensor, view_size: tuple[int, int],
                      resolution: str = "feature") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5 between the online map ``p`` of view a and the target map ``z`` of view b (both at
    feature resolution), with z warped into view a by T (eq. 4). Returns (loss, valid fraction).

    ``'image'``: Algorithm 1 — upsample p and z to the view size, compose T per view pixel, warp.
    ``'feature'``: compose T on the feature grid (cell k ↔ view pixel s·k + (s−1)/2) and warp the
    feature map itself. All of it in fp32, whatever the autocast state and the dtype of p and z.
    """
    if resolution == "image":
        p = F.interpolate(p, size=view_size, mode="bilinear", align_corners=False)
        z = F.interpolate(z, size=view_size, mode="bilinear", align_corners=False)
        t, valid = view_flow(aff_a, aff_b, flow_ab, valid_ab, view_size)
    else:
        stride = round(view_size[0] / p.shape[-2])
        t, valid = view_flow(aff_a, aff_b, flow_ab, valid_ab, view_size, stride=stride)
        t, valid = t[..., : p.shape[-2], : p.shape[-1]], valid[..., : p.shape[-2], : p.shape[-1]]
    z_warped, inside = warp(z, t)
    valid = valid & inside
    return flowe_loss(p, z_warped, valid), valid.float().mean()


@OBJECTIVES.register_module(name="flowe")
class FlowE(BootstrapObjective):
    """Online p₁ = q(g(f(v₁))) is matched per pixel to the target z₂ = g_ξ(f_ξ(v₂)) warped into
    view 1 by T (eq. 4–5).

    ``loss_resolution='image'`` follows Algorithm 1 (upsample p₁ and z₂ to the view size, then
    warp); ``'feature'`` evaluates T on the stride-8 feature grid and warps the feature maps
    directly — the same objective for smooth fields, at 1/64 of the memory. ``flow`` configures a
    model-side flow source (RAFT on the training device); otherwise the batch must carry the flow
    the dataset computed (``flow_fw``, ``flow_bw``, ``valid_fw``, ``valid_bw``).
    """

    method = "flowe"

    def __init__(self, encoder: dict[str, Any], loss_resolution: str = "feature", symmetric: bool = True,
                 flow: dict[str, Any] | None = None, dense: bool = True, **kwargs: Any) -> None:
        super().__init__(encoder, **kwargs)
        self.dense = dense  # False: Table 4's "non pixel-based" variant, global pooling before the heads
        if loss_resolution not in LOSS_RESOLUTIONS:
            raise KeyError(f"loss_resolution must be one of {LOSS_RESOLUTIONS}, got '{loss_resolution}'")
        self.loss_resolution, self.symmetric = loss_resolution, symmetric
        # Kept out of the module tree: a frozen RAFT must not land in checkpoints or DDP buffers.
        self._flow_source = [build_flow_source(flow)]

    @property
    def flow_source(self):
        return self._flow_source[0]

    def flows(self, batch: dict[str, torch.Tensor]) -> FlowPair | None:
        if not self.dense:
            return None
        if "flow_fw" in batch:
            return FlowPair(batch["flow_fw"], batch["flow_bw"], batch["valid_fw"], batch["valid_bw"])
        if self.flow_source is None or "frame1" not in batch:
            raise KeyError("the batch has no flow and the objective no flow source: set data.flow (dis, "
                           "precomputed, ground_truth) or model.flow (raft)")
        source = self.flow_source.to(batch["frame1"].device)
        return source(batch["frame1"], batch["frame2"])

    def directional_loss(self, va: torch.Tensor, vb: torch.Tensor, aff_a: torch.Tensor, aff_b: torch.Tensor,
                         flow_ab: torch.Tensor, valid_ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ℓ(view a → view b); returns the loss and the fraction of valid locations."""
        if not self.dense:
            p = self.predictor(self.projector(F.adaptive_avg_pool2d(self.encoder(va), 1)))
            with torch.no_grad():
                z = self.target_projector(F.adaptive_avg_pool2d(self.target_encoder(vb), 1))
            return byol_loss(p, z), torch.ones((), device=va.device)
        p = self.predictor(self.projector(self.encoder(va)))
        z = self.target_forward(vb)
        return equivariance_loss(p, z, aff_a, aff_b, flow_ab, valid_ab, tuple(va.shape[-2:]), self.loss_resolution)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        flow = self.flows(batch)
        v1, v2, a1, a2 = batch["view1"], batch["view2"], batch["affine1"], batch["affine2"]
        fw = bw = valid_fw = valid_bw = None
        if flow is not None:
            fw, bw, valid_fw, valid_bw = flow.fw, flow.bw, flow.valid_fw, flow.valid_bw
        loss, frac = self.directional_loss(v1, v2, a1, a2, fw, valid_fw)
        if self.symmetric:  # view 2 → view 1 uses the backward flow M₂→₁
            loss2, frac2 = self.directional_loss(v2, v1, a2, a1, bw, valid_bw)
            loss, frac = loss + loss2, (frac + frac2) / 2
        return {"loss": loss, "valid_fraction": frac.detach()}
