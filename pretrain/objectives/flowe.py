"""FlowE (Xiong et al., ICCV 2021): dense BYOL with flow equivariance (§3.2, Algorithm 1).

Precision: the encoder and heads follow the caller's autocast (bf16 on GPU); the composition of T,
the warp and eq. 5 run in fp32 on fp32 copies of p and z (:mod:`pretrain.precision`), so the loss
of an equivariant network is the same under bf16 as in fp32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..flow.sources import FlowPair, build_flow_source
from ..flow.warp import pixel_coords, warp
from ..geometry import view_flow
from ..losses import byol_loss, flowe_loss
from ..precision import fp32
from ..registry import OBJECTIVES
from .base import BootstrapObjective

LOSS_RESOLUTIONS = ("image", "feature")
# How a band of the image loss reads the warped target: "rows" upsamples the span of z rows its targets
# touch, "taps" reads four upsampled neighbours per pixel; "auto" takes rows unless that span exceeds
# 3× the band. The value: the span, in bands, above which the taps are read. Forcing one is for tests.
BAND_PATHS = {"auto": 3.0, "rows": math.inf, "taps": 0.0}


def upsampled_at(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bilinear', align_corners=False)`` read only at the integer
    pixels (xs, ys) [B,h,w] of the ``size`` grid, without building the upsampled map: output pixel j
    of that grid sits at normalised coordinate (2j + 1)/W − 1 of x under ``align_corners=False``,
    and interpolate's clamping at the borders is grid_sample's ``'border'`` padding. [B,C,h,w]."""
    h, w = size
    grid = torch.stack([(2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _warped_taps(z: torch.Tensor, target_at: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """z upsampled to ``size``, then read bilinearly at ``target_at`` [B,2,r,W]: the four integer
    neighbours of each target (zero outside the view, as ``warp`` pads), each one z upsampled at
    that pixel. Any flow; four samplings of z per pixel."""
    h, w = size
    x0, y0 = target_at[:, 0].floor(), target_at[:, 1].floor()
    fx, fy = target_at[:, 0] - x0, target_at[:, 1] - y0
    out = None
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy),
                           (1, 1, fx * fy)):
        xc, yc = x0 + dx, y0 + dy
        weight = weight * ((xc >= 0) & (xc <= w - 1) & (yc >= 0) & (yc <= h - 1))
        tap = weight[:, None] * upsampled_at(z, xc, yc, size)
        out = tap if out is None else out.add_(tap)
    return out


def _warped_rows(z: torch.Tensor, target_at: torch.Tensor, weight: torch.Tensor,
                 size: tuple[int, int], taps_above: float = BAND_PATHS["auto"]) -> torch.Tensor:
    """Same values as :func:`_warped_taps`, cheaper where a band of view rows reads few rows of the
    upsampled z (flow and view scales move rows by little): per sample, upsample only the rows
    [lo, hi] its valid targets touch, then one bilinear warp over them. Falls back to the four taps
    when that span exceeds ``taps_above`` × the band (3; see :data:`BAND_PATHS`). A sample with no
    valid target in the band gives zeros (its weight is zero there)."""
    h, w = size
    rows = target_at.shape[2]
    out = []
    for i in range(z.shape[0]):
        ty = target_at[i, 1][weight[i] > 0]
        if ty.numel() == 0:
            out.append(z.new_zeros(1, z.shape[1], rows, w))
            continue
        lo = int(ty.min().floor().clamp(0, h - 1))
        hi = int((ty.max().floor() + 1).clamp(0, h - 1))
        if hi - lo + 1 > taps_above * rows:
            out.append(_warped_taps(z[i : i + 1], target_at[i : i + 1], size))
            continue
        span = pixel_coords(hi - lo + 1, w, z.device, target_at.dtype)
        z_rows = upsampled_at(z[i : i + 1], span[None, 0], span[None, 1] + lo, size)
        grid = torch.stack([2 * target_at[i, 0] / max(w - 1, 1) - 1,
                            2 * (target_at[i, 1] - lo) / max(hi - lo, 1) - 1], -1)
        out.append(F.grid_sample(z_rows, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True))
    return torch.cat(out)


class _BandedImageLoss(torch.autograd.Function):
    """Σ of eq. 5 over the view's pixels, band by band, with dΣ/dp computed in the same pass: the
    loss reaches p only through this sum, so backward just scales the stored gradient (the size of
    p, not of the view) — no full-resolution map is kept and nothing is recomputed.

    Per band, p̂ = p upsampled at the band's pixels and ẑ = z upsampled then warped; with
    s = ⟨p̂, ẑ⟩ / (‖p̂‖‖ẑ‖), eq. 5 is 2 − 2s and its gradient −2/‖p̂‖ · (ẑ/‖ẑ‖ − s·p̂/‖p̂‖) is written
    out (four fused passes instead of autograd's normalise–subtract–square graph); only the
    adjoint of the upsampling goes through autograd. Norms are clamped at 1e-12 like ``F.normalize``.

    ``need_grad``: the caller's ``torch.is_grad_enabled() and p.requires_grad``. Inside ``forward``
    grad mode is always off and ``ctx.needs_input_grad`` ignores the caller's ``no_grad``, so without
    it an evaluation under ``no_grad`` would compute (and keep) dΣ/dp for nothing.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, z: torch.Tensor, q: torch.Tensor, target_at: torch.Tensor,  # noqa: ANN001
                weight: torch.Tensor, size: tuple[int, int], chunk_rows: int, need_grad: bool,
                taps_above: float) -> torch.Tensor:
        need_grad = need_grad and ctx.needs_input_grad[0]
        total = p.new_zeros(())
        grad_p = torch.zeros_like(p) if need_grad else None
        for r0 in range(0, size[0], chunk_rows):
            rows = slice(r0, min(r0 + chunk_rows, size[0]))
            q_band, w_band = q[:, :, rows], weight[:, None, rows]
            with torch.enable_grad():
                leaf = p.detach().requires_grad_(need_grad)
                p_up = upsampled_at(leaf, q_band[:, 0], q_band[:, 1], size)
            p_hat = p_up.detach()
            z_unit = _warped_rows(z, target_at[:, :, rows], weight[:, rows], size, taps_above)
            z_unit = z_unit.mul_(1 / torch.linalg.vector_norm(z_unit, dim=1, keepdim=True).clamp_min(1e-12))
            inv_norm_p = 1 / torch.linalg.vector_norm(p_hat, dim=1, keepdim=True).clamp_min(1e-12)
            cos = (p_hat * z_unit).sum(1, keepdim=True).mul_(inv_norm_p)
            total += (w_band * (2 - 2 * cos)).sum()
            if need_grad:
                grad_up = z_unit.sub_(p_hat * (cos * inv_norm_p)).mul_(-2 * inv_norm_p * w_band)
                grad_p += torch.autograd.grad(p_up, leaf, grad_up)[0]
        ctx.save_for_backward(grad_p if need_grad else p.new_zeros(()))
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        (grad_p,) = ctx.saved_tensors
        return (grad_p * grad_total if ctx.needs_input_grad[0] else None,) + (None,) * 8


def image_resolution_loss(p: torch.Tensor, z: torch.Tensor, t: torch.Tensor, valid: torch.Tensor,
                          size: tuple[int, int], chunk_rows: int = 32,
                          band_path: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's loss (upsample p and z to the view, warp z by T, eq. 5 per view pixel) computed
    in bands of ``chunk_rows`` view rows (:class:`_BandedImageLoss`): neither the upsampled maps nor
    the warped one ever exist whole. Same numbers as the straightforward version (tests check loss
    and gradients on both band paths, :data:`BAND_PATHS`), at the memory of the feature-grid loss.
    ``t``/``valid`` [B,2,H,W]/[B,H,W] are T and its validity per view pixel; z is a target (no
    gradient). Computes in fp32, or in fp64 when any of p, z, t is (as the straightforward version)."""
    if band_path not in BAND_PATHS:
        raise KeyError(f"band_path must be one of {sorted(BAND_PATHS)}, got '{band_path}'")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 for the banded loss, got {chunk_rows}")
    h, w = size
    b = p.shape[0]
    dtype = torch.float32
    for x in (p, z, t):  # at least fp32 (coordinates), fp64 when an input is
        dtype = torch.promote_types(dtype, x.dtype)
    q = pixel_coords(h, w, p.device, dtype).expand(b, -1, -1, -1)
    target_at = q + t.to(dtype)
    inside = ((target_at[:, 0] >= 0) & (target_at[:, 0] <= w - 1) & (target_at[:, 1] >= 0)
              & (target_at[:, 1] <= h - 1))
    valid = valid & inside
    weight = valid.to(dtype)
    need_grad = torch.is_grad_enabled() and p.requires_grad
    total = _BandedImageLoss.apply(p.to(dtype), z.detach().to(dtype), q, target_at, weight, size, chunk_rows,
                                   need_grad, BAND_PATHS[band_path])
    return total / weight.sum().clamp(min=1), valid


@fp32
def equivariance_loss(p: torch.Tensor, z: torch.Tensor, aff_a: torch.Tensor, aff_b: torch.Tensor,
                      flow_ab: torch.Tensor, valid_ab: torch.Tensor, view_size: tuple[int, int],
                      resolution: str = "feature", chunk_rows: int = 32,
                      band_path: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5 between the online map ``p`` of view a and the target map ``z`` of view b (both at
    feature resolution), with z warped into view a by T (eq. 4). Returns (loss, valid fraction).

    ``'image'``: Algorithm 1 — upsample p and z to the view size, compose T per view pixel, warp;
    computed in bands of ``chunk_rows`` rows (:func:`image_resolution_loss`), or all at once with
    ``chunk_rows=0`` (the straightforward reference, which holds several full-resolution maps);
    ``band_path`` forces how a band reads the warped target (:data:`BAND_PATHS`, for tests).
    ``'feature'``: compose T on the feature grid (cell k ↔ view pixel s·k + (s−1)/2) and warp the
    feature map itself. All of it in fp32, whatever the autocast state and the dtype of p and z.
    """
    if resolution == "image" and chunk_rows:
        t, valid = view_flow(aff_a, aff_b, flow_ab, valid_ab, view_size)
        loss, valid = image_resolution_loss(p, z.detach(), t, valid, view_size, chunk_rows, band_path)
        return loss, valid.float().mean()
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
                 flow: dict[str, Any] | None = None, dense: bool = True, loss_chunk_rows: int = 32,
                 **kwargs: Any) -> None:
        super().__init__(encoder, **kwargs)
        self.dense = dense  # False: Table 4's "non pixel-based" variant, global pooling before the heads
        if loss_resolution not in LOSS_RESOLUTIONS:
            raise KeyError(f"loss_resolution must be one of {LOSS_RESOLUTIONS}, got '{loss_resolution}'")
        self.loss_resolution, self.symmetric = loss_resolution, symmetric
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
        if not self.dense:
            p = self.predictor(self.projector(F.adaptive_avg_pool2d(self.encoder(va), 1)))
            with torch.no_grad():
                z = self.target_projector(F.adaptive_avg_pool2d(self.target_encoder(vb), 1))
            return byol_loss(p, z), torch.ones((), device=va.device)
        p = self.predictor(self.projector(self.encoder(va)))
        z = self.target_forward(vb)
        return equivariance_loss(p, z, aff_a, aff_b, flow_ab, valid_ab, tuple(va.shape[-2:]), self.loss_resolution,
                                 self.loss_chunk_rows)

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
