"""View geometry of FlowE (§3.2, eq. 2–4): random affine views and the flow between two views.

An affine ``A`` is a [2,3] matrix mapping *source-image* pixel coordinates p to *view* pixel
coordinates q = A·[p; 1]. A view is rendered by sampling the source at A⁻¹q.

Precision: every function here computes in fp32 whatever the autocast state (``@fp32``). Under bf16
autocast the matmul/einsum would round coordinates to 8 significant bits — 4 px steps above 512 —
and T would be off by pixels (see :mod:`pretrain.precision`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .flow.warp import pixel_coords, sample_at
from .precision import fp32


def random_affine(rng: np.random.Generator, size: tuple[int, int], scale: tuple[float, float] = (0.5, 2.0),
                  rotation: float = 30.0, translate: float = 0.0, hflip: float = 0.0) -> torch.Tensor:
    """Scale U[scale] and rotation U[−rotation°, rotation°] about the image centre (FlowE §3.3),
    optionally a translation of up to ``translate``·size and, with probability ``hflip``, a mirror
    about the vertical centre line (PooDLe's dense augmentation). Scale is drawn log-uniformly so
    that zooming in and out are equally likely."""
    h, w = size
    s = math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1])))
    a = math.radians(rng.uniform(-rotation, rotation))
    t = rng.uniform(-translate, translate, 2) * np.array([w, h])
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    lin = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    if hflip and rng.uniform() < hflip:  # no extra draw when off: earlier configs keep their streams
        lin = lin @ np.diag([-1.0, 1.0])
    return torch.tensor(np.concatenate([lin, (c - lin @ c + t)[:, None]], 1), dtype=torch.float32)


@fp32
def invert_affine(a: torch.Tensor) -> torch.Tensor:
    """Inverse of [...,2,3] affines."""
    lin_inv = torch.linalg.inv(a[..., :2])
    return torch.cat([lin_inv, -(lin_inv @ a[..., 2:])], -1)


@fp32
def apply_affine(a: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map points [B,2,h,w] by affines [B,2,3]."""
    return torch.einsum("bij,bjhw->bihw", a[..., :2], points) + a[..., 2, None, None]


@fp32
def render_view(image: torch.Tensor, affine: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Eq. 2–3: view v = A(I) — view[q] = I[A⁻¹q], bilinear, zeros outside. image [B,C,H,W] → fp32."""
    b = image.shape[0]
    h, w = size or image.shape[-2:]
    grid = pixel_coords(h, w, image.device, image.dtype).expand(b, -1, -1, -1)
    return sample_at(image, apply_affine(invert_affine(affine.to(grid)), grid))[0]


@fp32
def view_flow(affine1: torch.Tensor, affine2: torch.Tensor, flow12: torch.Tensor, valid12: torch.Tensor,
              view_size: tuple[int, int], stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow from view 1 to view 2 — FlowE's T = A₁⁻¹ ∘ M₁→₂ ∘ A₂ (eq. 4), as a field.

    For each view-1 location q₁ we go back to frame 1 (p₁ = A₁⁻¹q₁), follow the frame flow
    (p₂ = p₁ + M₁→₂(p₁), bilinear) and into view 2 (q₂ = A₂p₂). The result is returned in the
    warp convention of :mod:`pretrain.flow.warp`: ``warp(things_in_view2, flow)`` is aligned with
    view 1. With ``stride`` s > 1 the field is evaluated on the stride-s feature grid, whose cell k
    is centred on view pixel s·k + (s − 1)/2 (the ``F.interpolate`` convention), in feature pixels.

    ``valid`` [B,h,w] keeps only locations whose p₁ lies inside frame 1, whose flow is valid
    (non-occluded: all four bilinear neighbours), and whose q₂ lies inside view 2 — the pixels with
    a correspondence (FlowE §3.3, "Flow post-processing").

    Always fp32 (coordinates up to the view width must keep sub-pixel precision), also when called
    under bf16 autocast or with a bf16 flow.
    """
    b = flow12.shape[0]
    vh, vw = view_size
    fh, fw = math.ceil(vh / stride), math.ceil(vw / stride)
    q1 = pixel_coords(fh, fw, flow12.device, flow12.dtype) * stride + (stride - 1) / 2
    q1 = q1.expand(b, -1, -1, -1)
    p1 = apply_affine(invert_affine(affine1.to(flow12)), q1)
    m, inside1 = sample_at(flow12, p1)
    ok = sample_at(valid12[:, None].to(flow12.dtype), p1)[0][:, 0] > 0.999
    p2 = p1 + m
    q2 = apply_affine(affine2.to(flow12), p2)
    fh2, fw2 = flow12.shape[-2:]
    inside_frame2 = (p2[:, 0] >= 0) & (p2[:, 0] <= fw2 - 1) & (p2[:, 1] >= 0) & (p2[:, 1] <= fh2 - 1)
    inside_view2 = (q2[:, 0] >= 0) & (q2[:, 0] <= vw - 1) & (q2[:, 1] >= 0) & (q2[:, 1] <= vh - 1)
    return (q2 - q1) / stride, inside1 & ok & inside_frame2 & inside_view2
