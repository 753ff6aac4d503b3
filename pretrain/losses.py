"""Losses as pure functions (solo-learn style): tensors in, scalar out, each with its own test.

Every loss computes in fp32 whatever the autocast state (``@fp32``): bf16 inputs are cast up, the
kernels, least squares, histograms and reductions run with autocast off, and the result is fp32.
Gradients flow back to bf16 inputs through the cast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .precision import fp32


def normalized_squared_distance(p: torch.Tensor, z: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """‖p̃ − z̃‖² over ``dim`` with ~ the unit normalisation; equals 2 − 2·cos(p, z)."""
    return (F.normalize(p, dim=dim) - F.normalize(z, dim=dim)).pow(2).sum(dim)


@fp32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """FlowE eq. 1 / BYOL: mean over the batch of ‖p̃₁ − z̃₂‖². ``z`` is a target: no gradient."""
    return normalized_squared_distance(p.flatten(1), z.detach().flatten(1)).mean()


@fp32
def flowe_loss(p1: torch.Tensor, p2: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """FlowE eq. 5: mean over valid locations of ‖p̃₁ − p̃₂‖², ~ normalising over channels.

    ``p1`` [B,C,H,W] is the online prediction of view 1, ``p2`` the target projection of view 2
    already warped into view 1 (no gradient), ``valid`` [B,H,W] the locations with a
    correspondence. The mean runs over all valid locations of the batch.
    """
    d = normalized_squared_distance(p1, p2.detach(), dim=1)
    w = valid.to(d.dtype)
    return (d * w).sum() / w.sum().clamp(min=1)


# -- cross-pixel flow similarity (Mahendran et al. 2018, §3–4) -------------------------------------

@fp32
def normalize_flow_log(flow: torch.Tensor, max_flow: float = 56.0) -> torch.Tensor:
    """Eq. 6: sign(f)·min(1, log(|f| + 1)/log(M + 1)) per component, so large flows do not dominate."""
    return flow.sign() * torch.clamp(torch.log1p(flow.abs()) / math.log1p(max_flow), max=1.0)


def _diagonal_reduced_log_softmax(kernel: torch.Tensor) -> torch.Tensor:
    """Column-wise log-softmax of a [B,N,N] kernel with the diagonal logit lowered by 1 — eq. 4–5:
    exp(K_f(p,p)) = e¹ becomes 1 = e⁰, exp(K_φ(p,p)) = e^{1/4} becomes e^{−3/4}."""
    eye = torch.eye(kernel.shape[-1], dtype=kernel.dtype, device=kernel.device)
    return torch.log_softmax(kernel - eye, dim=-2)


@fp32
def cross_pixel_similarity_loss(embeddings: torch.Tensor, flow: torch.Tensor, sigma2: torch.Tensor,
                                reduction: str = "mean") -> torch.Tensor:
    """Eq. 2–5: L = −Σ_q Σ_p S_f(p,q) log S_φ(p,q) per image.

    ``embeddings`` [B,N,D] at N sampled pixels, ``flow`` [B,N,2] (normalised by eq. 6) at the same
    pixels, ``sigma2`` the RBF bandwidth σ² (learned). K_φ = ¼·cos(φ_p, φ_q); K_f = exp(−‖f_p − f_q‖²/2σ²).
    ``reduction='sum'`` is eq. 3 summed over the batch; ``'mean'`` divides by B·N (one column each).
    """
    phi = F.normalize(embeddings, dim=-1)
    k_phi = 0.25 * phi @ phi.transpose(1, 2)
    k_f = torch.exp(-torch.cdist(flow, flow).pow(2) / (2 * sigma2))
    s_f = _diagonal_reduced_log_softmax(k_f).exp()
    loss = -(s_f * _diagonal_reduced_log_softmax(k_phi)).sum()
    if reduction == "sum":
        return loss
    return loss / (embeddings.shape[0] * embeddings.shape[1])


@fp32
def flow_bins(flow: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """Class of each normalised flow component: [−1, 1] cut into ``bins`` uniform intervals (long)."""
    return ((flow.clamp(-1, 1) + 1) / 2 * bins).long().clamp(max=bins - 1)


@fp32
def flow_bin_classification_loss(logits: torch.Tensor, flow: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """The cross-pixel paper's flow-classification baseline (§4, its "direct optical-flow prediction";
    the L² regression of flow vectors it also mentions is a different one, not implemented):
    normalised flow in [−1, 1] split into ``bins`` uniform classes per axis; softmax cross-entropy for
    x and for y. ``logits`` [B,2·bins,N], ``flow`` [B,N,2]. The bins are taken from fp32 flow: a bf16
    flow near a bin edge would land in the neighbouring class."""
    target = flow_bins(flow, bins)                                      # [B,N,2]
    lx, ly = logits[:, :bins], logits[:, bins:]
    return F.cross_entropy(lx, target[..., 0]) + F.cross_entropy(ly, target[..., 1])


# -- S3-CNN grouping losses (Mahendran et al. 2018) ------------------------------------------------

def _affine_design(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[H·W, 3] rows (x, y, 1) with x, y scaled to [−1, 1] for a well-conditioned fit."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height, device=device, dtype=dtype),
                            torch.linspace(-1, 1, width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones_like(xs).reshape(-1)], 1)


@fp32
def affine_motion_loss(masks: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor | None = None,
                       ridge: float = 1e-4, eps: float = 1e-3) -> torch.Tensor:
    """S3-CNN affine motion loss: fit one affine motion per soft region by weighted least squares
    (differentiable closed form), recombine the fits with the masks, and take a robust
    (Charbonnier) residual against the flow.

    ``masks`` [B,L,H,W] soft segmentation (summing to 1 over L), ``flow`` [B,2,H,W] in pixels at the
    same resolution, ``valid`` [B,H,W] where the flow is trusted.
    """
    b, n_regions, h, w = masks.shape
    x = _affine_design(h, w, masks.device, masks.dtype)                 # [P,3]
    m = masks.flatten(2)                                                # [B,L,P]
    v = torch.ones(b, h * w, device=masks.device, dtype=masks.dtype) if valid is None else valid.flatten(1).to(m)
    wm = m * v[:, None]                                                 # weights of trusted pixels
    f = flow.flatten(2).transpose(1, 2)                                 # [B,P,2]
    xtwx = torch.einsum("blp,pi,pj->blij", wm, x, x) + ridge * torch.eye(3, device=x.device, dtype=x.dtype)
    xtwf = torch.einsum("blp,pi,bpk->blik", wm, x, f)
    a = torch.linalg.solve(xtwx, xtwf)                                  # [B,L,3,2] per-region affine
    recon = torch.einsum("blp,pi,blik->bpk", m, x, a)                   # Σ_l m_l(u)·A_l x_u
    residual = torch.sqrt((recon - f).pow(2).sum(-1) + eps**2) - eps
    return (residual * v).sum() / v.sum().clamp(min=1)


@fp32
def histogram_entropy_loss(masks: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor | None = None,
                           bins: int = 16, max_magnitude: float | None = None,
                           range_quantile: float = 0.99) -> torch.Tensor:
    """S3-CNN low-entropy motion loss: a soft (Gaussian-binned) histogram of flow magnitude per soft
    region; the loss is the regions' entropy weighted by their mass, so regions that straddle
    differently moving things (a spread-out histogram) cost more.

    The histogram spans [0, top] per image: ``max_magnitude`` if given (fixed, in the flow's units),
    else the ``range_quantile`` of that image's *valid* magnitudes; larger magnitudes fall in the
    last bin. A range set by the batch maximum (invalid pixels included) lets one 200-px outlier
    squeeze every real motion into the first bins: the entropy gap between a true and a wrong
    segmentation drops from ln 2 = 0.69 to 0.02 nats.
    """
    b, n_regions, h, w = masks.shape
    mag = flow.norm(dim=1).flatten(1)                                   # [B,P]
    v = torch.ones_like(mag, dtype=torch.bool) if valid is None else valid.flatten(1).bool()
    if max_magnitude is not None:
        top = mag.new_full((b, 1), float(max_magnitude))
    else:
        top = torch.nanquantile(mag.detach().masked_fill(~v, float("nan")), range_quantile, dim=1, keepdim=True)
        top = top.nan_to_num(1.0)                                       # no valid pixel: any range
    top = top.clamp(min=1e-6)[..., None]                                # [B,1,1]
    centres = torch.linspace(0, 1, bins, device=flow.device, dtype=mag.dtype) * top  # [B,1,K]
    width = top / (bins - 1)
    mag = torch.minimum(mag[..., None], top)                            # [B,P,1]
    soft = torch.exp(-0.5 * ((mag - centres) / width) ** 2)             # [B,P,K]
    soft = soft / soft.sum(-1, keepdim=True)
    m = masks.flatten(2) * v[:, None].to(masks.dtype)
    hist = torch.einsum("blp,bpk->blk", m, soft)
    mass = hist.sum(-1, keepdim=True)
    p = hist / mass.clamp(min=1e-8)
    entropy = -(p * torch.log(p.clamp(min=1e-8))).sum(-1)               # [B,L]
    weight = mass[..., 0] / mass[..., 0].sum(-1, keepdim=True).clamp(min=1e-8)
    return (entropy * weight).sum(-1).mean()
