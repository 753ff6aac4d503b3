"""The one backward-warp convention used everywhere in flowssl.

``warp(x, flow)[p] = x[p + flow[p]]``: flow is in pixels, indexed at the *output* pixel p, pixel
centres are integers (x ∈ [0, W-1]); sampling is bilinear with zeros outside. So with the forward
flow M₁→₂ of a frame pair, ``warp(I₂, M₁→₂) ≈ I₁`` on pixels visible in both frames.

Coordinates, grids and sampled values are fp32 whatever the autocast state: bf16 pixel coordinates
above 512 are 4 px apart (:mod:`pretrain.precision`). bf16 inputs (features from an autocast
encoder) are cast up for the sampling; gradients flow back to them through the cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..precision import fp32


def pixel_coords(height: int, width: int, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[2, H, W] (x, y) coordinates of pixel centres."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys])


@fp32
def sample_at(x: torch.Tensor, points: torch.Tensor, mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """Sample x [B,C,H,W] at pixel points [B,2,h,w]; returns values [B,C,h,w] (at least fp32) and the
    mask of points inside x's pixel-centre hull (where bilinear needs no zero padding)."""
    h, w = x.shape[-2:]
    dtype = torch.promote_types(x.dtype, points.dtype)  # fp32, or fp64 when either is
    x, points = x.to(dtype), points.to(dtype)
    gx = 2 * points[:, 0] / max(w - 1, 1) - 1
    gy = 2 * points[:, 1] / max(h - 1, 1) - 1
    out = F.grid_sample(x, torch.stack([gx, gy], -1), mode=mode, padding_mode="zeros", align_corners=True)
    inside = (points[:, 0] >= 0) & (points[:, 0] <= w - 1) & (points[:, 1] >= 0) & (points[:, 1] <= h - 1)
    return out, inside


@fp32
def warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """``out[p] = x[p + flow[p]]`` for x [B,C,H',W'] and flow [B,2,H,W]; returns (out, valid), out at
    least fp32."""
    b, _, h, w = flow.shape
    return sample_at(x, pixel_coords(h, w, flow.device, flow.dtype).expand(b, -1, -1, -1) + flow, mode)


@fp32
def forward_backward_occlusion(flow_fw: torch.Tensor, flow_bw: torch.Tensor, alpha1: float = 0.01,
                               alpha2: float = 0.5) -> torch.Tensor:
    """Occlusion by forward–backward consistency (Sundaram et al. 2010, cited by FlowE §3.3).

    A pixel is occluded when following w = flow_fw[p] and coming back with ŵ = flow_bw[p + w]
    misses p by more than a magnitude-relative threshold:
    |w + ŵ|² > α₁(|w|² + |ŵ|²) + α₂, or when p + w leaves the frame. Returns [B,H,W] bool.
    """
    back, inside = warp(flow_bw, flow_fw)
    err = (flow_fw + back).pow(2).sum(1)
    bound = alpha1 * (flow_fw.pow(2).sum(1) + back.pow(2).sum(1)) + alpha2
    return (err > bound) | ~inside
