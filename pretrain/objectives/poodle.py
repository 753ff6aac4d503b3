"""PooDLe (Wang, Hoang, Xiong, LeCun, Ren, ICLR 2025): FlowE's dense objective on a spatial decoder,
plus a pooled BYOL objective on small flow-paired subcrops.

Dense: FlowE's eq. 4–5 (:func:`pretrain.objectives.flowe.equivariance_loss`, the same ``view_flow``,
warp and masks), but on the stride-8 output of :class:`~pretrain.models.decoder.SpatialDecoder`
over a standard stride-32 encoder instead of on a dilated encoder. Pooled: in driving scenes road
and sky dominate every dense average, so PooDLe also matches *small* subcrops ("pseudo-iconic"
views, 5–30 % of the view) of the two frames: a crop of view a and a crop of view b centred where
the flow carries the first crop's centre, encoded separately, pooled (layer4, global average) and
matched with BYOL's loss. Loss = 0.5·dense + 0.5·pooled (reference ``configs/exp/poodle.yaml``).

Subcrop placement follows the reference code (``src/models/poodle.py``): K centres in K distinct
cells of a grid of cells about a mean crop's size, each uniform over the in-image part of its cell;
the online crop's size is drawn first and its centre kept far enough from the top/left border that
the crop starts inside the view (the reference's ``max(i, h // 2)``; past the bottom/right border it
may reach into zero padding, as there); the partner centre = centre + T(centre) + a jitter of up to
±10 % of the view, up to 5 tries per crop, else a second crop of the same view around the *same*
centre (a concentric pair); the target crop is at least as large and clamped to its view.
Differences, chosen for this harness: crops are cut from the two *views* (after FlowE's affine), so
the partner is found through T = A_b ∘ M ∘ A_a⁻¹ rather than the frame flow alone; a try also needs
T to be valid (non-occluded) at the centre, not only inside the view; the grid has no cell wholly
outside the view (the reference's ``H // cell + 1`` rows add an empty one when the cell divides H,
where its ``randint`` fails).

Precision: centres, T, boxes and the crop sampling (``roi_align``) are fp32 under autocast.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..geometry import view_flow
from ..losses import byol_loss
from ..models import MLPHead
from ..models.decoder import SpatialDecoder
from ..precision import fp32, fp32_geometry
from ..registry import OBJECTIVES
from .base import momentum_copy
from .flowe import FlowE

SUBCROP_DEFAULTS: dict[str, Any] = {
    "num": 6,                 # pairs per view and direction (subcrop_num_pair)
    "scale": (0.05, 0.3),     # area fraction of the view (subcrop_scale)
    "ratio": (3 / 4, 4 / 3),  # aspect ratio w/h, log-uniform (subcrop_ratio)
    "size": (192, 192),       # each crop resized to this (subcrop_size)
    "jitter": 0.1,            # partner centre ± this fraction of the view's H and W (subcrop_jitter)
    "max_tries": 5,           # MAX_TRIES_PER_CROP, then a same-view pair
}


def _box_sizes(area: torch.Tensor, ratio: tuple[float, float], size: tuple[int, int],
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Width and height of boxes of ``area`` px² with aspect w/h log-uniform in ``ratio``, within ``size``."""
    log_r = torch.empty_like(area).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    w = (area * log_r.exp()).sqrt().clamp(max=size[1])
    h = (area / log_r.exp()).sqrt().clamp(max=size[0])
    return w, h


def _cell_pixels(cells: torch.Tensor, cell: int, cols: int, size: tuple[int, int], n: int,
                 generator: torch.Generator | None) -> torch.Tensor:
    """``n`` integer pixels (x, y) [B,K,n,2] drawn uniformly in the part of each cell ``cells`` [B,K]
    that lies in the view (the reference's ``randint(i·cell, min((i + 1)·cell, H))``): a border cell
    that reaches past the view is sampled over its in-image pixels only, not clamped onto the border."""
    h, w = size
    origin = torch.stack([(cells % cols) * cell, (cells // cols) * cell], -1).float()  # [B,K,2] (x, y)
    inside = torch.minimum(torch.full_like(origin, cell), torch.tensor([w, h], device=cells.device) - origin)
    u = torch.rand(*cells.shape, n, 2, device=cells.device, generator=generator)
    # min(): float32 u·extent may round up to the extent itself when u is within 2⁻²⁴ of 1
    return origin[:, :, None] + torch.minimum((u * inside[:, :, None]).floor(), inside[:, :, None] - 1)


@fp32
def flow_subcrops(t: torch.Tensor, valid: torch.Tensor, num: int = 6, scale: tuple[float, float] = (0.05, 0.3),
                  ratio: tuple[float, float] = (3 / 4, 4 / 3), jitter: float = 0.1, max_tries: int = 5,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """PooDLe's flow-paired subcrops between view a and view b.

    ``t`` [B,2,H,W], ``valid`` [B,H,W]: the view flow a → b (``view_flow``: pixel q of view a shows
    what pixel q + t(q) of view b shows) and where it holds. Returns ``boxes_a``/``boxes_b`` [B,K,4]
    as (x1, y1, x2, y2) in continuous pixel coordinates (pixel i covers [i, i + 1)), ``centre_a``/
    ``centre_b`` [B,K,2] (x, y) pixel centres, and ``paired`` [B,K]: True where box b lies in view b
    at the flow's partner, False where no try found one and box b is a second, concentric crop of
    view a (the reference's fallback: the same centre, its own size).

    As the reference: the grid has cells of about a mean crop's side; a centre is uniform over the
    in-image part of its cell (cells wholly outside the view, which the reference's ``H // cell + 1``
    rows create when the cell divides the size, are left out); the online crop's size is drawn
    first and its centre moved down/right until the crop starts inside the view (``max(i, h // 2)``),
    and the flow is read at that moved centre. The online crop may still reach past the bottom/right
    border (zero padding), as in the reference.
    """
    b, _, h, w = t.shape
    dev = t.device
    u = lambda *shape: torch.rand(*shape, device=dev, generator=generator)  # noqa: E731
    cell = max(1, round(math.sqrt(sum(scale) / 2) * min(h, w)))
    rows, cols = -(-h // cell), -(-w // cell)  # cells holding at least one pixel of the view
    cells = torch.multinomial(torch.ones(b, rows * cols, device=dev), num, replacement=num > rows * cols,
                              generator=generator)  # [B,K] distinct cells, uniformly
    limit = torch.tensor([w - 1, h - 1], device=dev, dtype=torch.float32)
    extent = torch.tensor([w, h], device=dev, dtype=torch.float32)

    area = extent.prod()
    s_a = scale[0] + (scale[1] - scale[0]) * u(b, num)
    s_b = s_a + (scale[1] - s_a) * u(b, num)  # the target crop is at least as large (reference code)
    w_a, h_a = _box_sizes(s_a * area, ratio, (h, w), generator)
    w_b, h_b = _box_sizes(s_b * area, ratio, (h, w), generator)

    # online crop inside the view at the top/left: centre + 0.5 − size/2 ≥ 0 (reference: max(i, h // 2))
    low = (torch.stack([w_a, h_a], -1) / 2 - 0.5).ceil()
    tries = torch.maximum(_cell_pixels(cells, cell, cols, (h, w), max_tries, generator), low[:, :, None])
    idx = (tries[..., 1] * w + tries[..., 0]).long().flatten(1)  # [B, K·n]
    flow_at = torch.gather(t.flatten(2), 2, idx[:, None].expand(-1, 2, -1)).view(b, 2, num, max_tries)
    partner = tries + flow_at.permute(0, 2, 3, 1) + (u(b, num, max_tries, 2) * 2 - 1) * jitter * extent
    ok = torch.gather(valid.flatten(1), 1, idx).view(b, num, max_tries)
    ok = ok & (partner >= 0).all(-1) & (partner <= limit).all(-1)
    first = torch.where(ok.any(-1), ok.float().argmax(-1), 0)  # the first accepted try (or try 0)
    pick = lambda x: torch.gather(x, 2, first[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]  # noqa: E731
    paired = ok.any(-1)
    centre_a = pick(tries)
    centre_b = torch.where(paired[..., None], pick(partner), centre_a)  # fallback: concentric, view a

    box = lambda c, bw, bh: torch.stack([c[..., 0] + 0.5 - bw / 2, c[..., 1] + 0.5 - bh / 2,  # noqa: E731
                                         c[..., 0] + 0.5 + bw / 2, c[..., 1] + 0.5 + bh / 2], -1)
    boxes_b = box(centre_b, w_b, h_b)
    boxes_b = torch.minimum(boxes_b.clamp(min=0), extent.repeat(2))  # clamped: border crops shrink
    return {"boxes_a": box(centre_a, w_a, h_a), "boxes_b": boxes_b, "centre_a": centre_a, "centre_b": centre_b,
            "paired": paired}


@fp32
def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resized crops [N,C,*size] of ``images`` [M,C,H,W] at ``boxes`` [N,4] (continuous pixel
    coordinates) of images ``index`` [N]: bilinear, area-averaged when shrinking (``roi_align`` with
    adaptive sampling); zeros outside the image, i.e. the mean colour of normalised inputs."""
    rois = torch.cat([index[:, None].to(boxes.dtype), boxes], 1)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


@OBJECTIVES.register_module(name="poodle")
class PooDLe(FlowE):
    """Dense: p = q(g(D(f(v_a)))) against z = g_ξ(D_ξ(f_ξ(v_b))) warped by T (FlowE eq. 4–5), D the
    spatial decoder. Pooled: BYOL between pooled layer4 features of flow-paired subcrops. Both
    directions in one batch (online on [v₁, v₂], target on [v₂, v₁]), as the reference code does.

    ``projector``/``predictor`` are the dense heads on the decoder; ``pooled_projector``/
    ``pooled_predictor`` the pooled ones on layer4; ``decoder`` configures
    :class:`~pretrain.models.decoder.SpatialDecoder`; ``subcrops`` overrides :data:`SUBCROP_DEFAULTS`;
    ``loss_weights`` = dict(dense, pooled).
    """

    method = "poodle"

    def __init__(self, encoder: dict[str, Any], decoder: dict[str, Any] | None = None,
                 projector: dict[str, int] | None = None, pooled_projector: dict[str, int] | None = None,
                 pooled_predictor: dict[str, int] | None = None, subcrops: dict[str, Any] | None = None,
                 loss_weights: dict[str, float] | None = None, loss_resolution: str = "image",
                 **kwargs: Any) -> None:
        decoder = dict(decoder or {})
        if "channels" in decoder:  # the dense heads read the decoder (unset, it is as wide as the encoder)
            projector = {**(projector or {}), "in_channels": decoder["channels"]}
        super().__init__(encoder, projector=projector, loss_resolution=loss_resolution, **kwargs)
        if not (self.symmetric and self.dense):
            raise ValueError("PooDLe matches dense maps in both directions in one batch: it has no "
                             "model.symmetric=False or model.dense=False variant (FlowE has)")
        self.decoder = SpatialDecoder(self.encoder.stage_channels, **{"channels": self.encoder.out_channels, **decoder})
        pooled_projector = {"hidden_channels": 4096, "out_channels": 256, **(pooled_projector or {})}
        self.pooled_projector = MLPHead(self.encoder.out_channels, **pooled_projector)
        self.pooled_predictor = MLPHead(self.pooled_projector.out_channels,
                                        out_channels=self.pooled_projector.out_channels,
                                        **{"hidden_channels": 4096, **(pooled_predictor or {})})
        self.target_decoder = momentum_copy(self.decoder)
        self.target_pooled_projector = momentum_copy(self.pooled_projector)
        unknown = set(subcrops or {}) - set(SUBCROP_DEFAULTS)
        if unknown:
            raise KeyError(f"unknown model.subcrops keys {sorted(unknown)}; known: {sorted(SUBCROP_DEFAULTS)}")
        self.subcrops = {**SUBCROP_DEFAULTS, **(subcrops or {})}
        self.subcrops["size"] = tuple(self.subcrops["size"])
        self.loss_weights = {"dense": 0.5, "pooled": 0.5, **(loss_weights or {})}
        if set(self.loss_weights) != {"dense", "pooled"}:
            raise KeyError(f"model.loss_weights takes 'dense' and 'pooled', got {sorted(self.loss_weights)}")

    @property
    def momentum_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return super().momentum_pairs + [(self.decoder, self.target_decoder),
                                         (self.pooled_projector, self.target_pooled_projector)]

    def dense_map(self, x: torch.Tensor) -> torch.Tensor:
        """g(D(f(x))): the online projection on the decoder's stride-8 grid."""
        return self.projector(self.decoder(self.encoder.forward_stages(x)))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        flow = self.flows(batch)
        if flow is None:
            raise KeyError("PooDLe needs flow between the two frames: set data.flow or model.flow")
        v1, v2, a1, a2 = batch["view1"], batch["view2"], batch["affine1"], batch["affine2"]
        va, vb = torch.cat([v1, v2]), torch.cat([v2, v1])
        aff_a, aff_b = torch.cat([a1, a2]), torch.cat([a2, a1])
        flow_ab, valid_ab = torch.cat([flow.fw, flow.bw]), torch.cat([flow.valid_fw, flow.valid_bw])
        size = tuple(va.shape[-2:])

        p = self.predictor(self.dense_map(va))
        with torch.no_grad():
            z = self.target_projector(self.target_decoder(self.target_encoder.forward_stages(vb)))
        dense, frac = self.equivariance_loss(p, z, aff_a, aff_b, flow_ab, valid_ab, size, self.loss_resolution,
                                             self.loss_chunk_rows)

        pooled, paired = self.pooled_loss(va, vb, aff_a, aff_b, flow_ab, valid_ab)
        loss = self.loss_weights["dense"] * dense + self.loss_weights["pooled"] * pooled
        return {"loss": loss, "dense_loss": dense.detach(), "pooled_loss": pooled.detach(),
                "valid_fraction": frac.detach(), "subcrops_paired": paired}

    def pooled_loss(self, va: torch.Tensor, vb: torch.Tensor, aff_a: torch.Tensor, aff_b: torch.Tensor,
                    flow_ab: torch.Tensor, valid_ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BYOL between layer4-pooled online crops of view a and target crops at their flow partners."""
        cfg = self.subcrops
        with torch.no_grad(), fp32_geometry():
            t, valid = view_flow(aff_a, aff_b, flow_ab, valid_ab, tuple(va.shape[-2:]))
            crops = flow_subcrops(t, valid, cfg["num"], cfg["scale"], cfg["ratio"], cfg["jitter"], cfg["max_tries"])
            n, k = crops["paired"].shape
            image = torch.arange(n, device=va.device).repeat_interleave(k)
            online = crop_boxes(va, crops["boxes_a"].flatten(0, 1), image, cfg["size"])
            # target crops from view b at the flow partner, or from view a where no try found one
            source = crop_boxes(torch.cat([va, vb]), crops["boxes_b"].flatten(0, 1),
                                image + n * crops["paired"].flatten().long(), cfg["size"])
        p = self.pooled_predictor(self.pooled_projector(F.adaptive_avg_pool2d(self.encoder(online), 1)))
        with torch.no_grad():
            z = self.target_pooled_projector(F.adaptive_avg_pool2d(self.target_encoder(source), 1))
        return byol_loss(p, z), crops["paired"].float().mean()


__all__ = ["SUBCROP_DEFAULTS", "PooDLe", "crop_boxes", "flow_subcrops"]
