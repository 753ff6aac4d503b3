"""FlowE (Xiong et al., ICCV 2021): dense BYOL with flow equivariance (§3.2, Algorithm 1).

The objective wires the heads and the inputs; the loss (eq. 4–5, Algorithm 1 in bands of rows) is
:func:`pretrain.losses.equivariance_loss`. Precision: the encoder and heads follow the caller's
autocast (bf16 on GPU); the loss runs in fp32 on fp32 copies of p and z (:mod:`pretrain.precision`),
so the loss of an equivariant network is the same under bf16 as in fp32.
"""

from __future__ import annotations

from typing import Any

import torch

from ..flow.sources import FlowPair, build_flow_source
from ..losses import LOSS_RESOLUTIONS, equivariance_loss
from ..registry import OBJECTIVES
from .byol import BYOL


@OBJECTIVES.register_module(name="flowe")
class FlowE(BYOL):
    """Online p₁ = q(g(f(v₁))) is matched per pixel to the target z₂ = g_ξ(f_ξ(v₂)) warped into
    view 1 by T (eq. 4–5).

    ``loss_resolution='image'`` follows Algorithm 1 (upsample p₁ and z₂ to the view size, then
    warp), in bands of ``loss_chunk_rows`` rows (0: the whole maps at once); ``'feature'`` evaluates
    T on the stride-8 feature grid and warps the feature maps directly — the same objective for
    smooth fields, at 1/64 of the memory. ``flow`` configures a model-side flow source (RAFT on the
    training device); otherwise the batch must carry the flow the dataset computed (``flow_fw``,
    ``flow_bw``, ``valid_fw``, ``valid_bw``). ``dense=False`` is Table 4's "non pixel-based" variant:
    BYOL on the two views, which is what this class extends.
    """

    method = "flowe"
    # The dense loss, looked up on the instance: a caller may wrap it on one model (the step benchmark
    # times it), and PooDLe, which calls it the same way, is wrapped along.
    equivariance_loss = staticmethod(equivariance_loss)

    def __init__(self, encoder: dict[str, Any], loss_resolution: str = "feature", symmetric: bool = True,
                 flow: dict[str, Any] | None = None, dense: bool = True, loss_chunk_rows: int = 32,
                 **kwargs: Any) -> None:
        super().__init__(encoder, symmetric=symmetric, **kwargs)
        self.dense = dense
        if loss_resolution not in LOSS_RESOLUTIONS:
            raise KeyError(f"loss_resolution must be one of {LOSS_RESOLUTIONS}, got '{loss_resolution}'")
        self.loss_resolution = loss_resolution
        self.loss_chunk_rows = loss_chunk_rows  # "image" loss in bands of rows; 0: the whole maps at once
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
        p = self.predictor(self.projector(self.encoder(va)))
        z = self.target_forward(vb)
        return self.equivariance_loss(p, z, aff_a, aff_b, flow_ab, valid_ab, tuple(va.shape[-2:]),
                                      self.loss_resolution, self.loss_chunk_rows)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.dense:  # BYOL, with every "location" (the pooled vector) valid
            return {**super().forward(batch), "valid_fraction": torch.ones((), device=batch["view1"].device)}
        flow = self.flows(batch)
        v1, v2, a1, a2 = batch["view1"], batch["view2"], batch["affine1"], batch["affine2"]
        loss, frac = self.directional_loss(v1, v2, a1, a2, flow.fw, flow.valid_fw)
        if self.symmetric:  # view 2 → view 1 uses the backward flow M₂→₁
            loss2, frac2 = self.directional_loss(v2, v1, a2, a1, flow.bw, flow.valid_bw)
            loss, frac = loss + loss2, (frac + frac2) / 2
        return {"loss": loss, "valid_fraction": frac.detach()}
