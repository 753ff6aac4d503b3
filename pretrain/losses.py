"""Losses as pure functions (solo-learn style): tensors in, scalar out, each with its own test."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_squared_distance(p: torch.Tensor, z: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """‖p̃ − z̃‖² over ``dim`` with ~ the unit normalisation; equals 2 − 2·cos(p, z)."""
    return (F.normalize(p, dim=dim) - F.normalize(z, dim=dim)).pow(2).sum(dim)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """FlowE eq. 1 / BYOL: mean over the batch of ‖p̃₁ − z̃₂‖². ``z`` is a target: no gradient."""
    return normalized_squared_distance(p.flatten(1), z.detach().flatten(1)).mean()


def flowe_loss(p1: torch.Tensor, p2: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """FlowE eq. 5: mean over valid locations of ‖p̃₁ − p̃₂‖², ~ normalising over channels.

    ``p1`` [B,C,H,W] is the online prediction of view 1, ``p2`` the target projection of view 2
    already warped into view 1 (no gradient), ``valid`` [B,H,W] the locations with a
    correspondence. The mean runs over all valid locations of the batch.
    """
    d = normalized_squared_distance(p1, p2.detach(), dim=1)
    w = valid.to(d.dtype)
    return (d * w).sum() / w.sum().clamp(min=1)
