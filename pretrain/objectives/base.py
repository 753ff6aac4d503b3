"""What every objective shares: an online encoder the readout keeps, and (for the BYOL family) a
momentum target network updated by EMA instead of by gradients."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..models import MLPHead, build_encoder
from ..optim import ema_momentum


class Objective(nn.Module):
    """Base: owns ``self.encoder`` (the torchvision-named network a checkpoint exports).

    ``forward(batch)`` returns a dict with a scalar ``loss`` (plus any scalars to log); an objective
    that learns from flow correspondences also returns ``valid_fraction``, the fraction of pixels its
    loss could use: at 0 the loss is 0 with nothing behind it, and the trainer skips the step.
    ``after_step(step, max_steps)`` runs after each optimiser step (EMA updates live there).
    """

    method: str = "objective"

    def __init__(self, encoder: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = build_encoder(**encoder)

    def after_step(self, step: int, max_steps: int) -> dict[str, float]:
        return {}

    @property
    def meta(self) -> dict[str, Any]:
        return {"method": self.method, **self.encoder.meta}


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module``: a target network, moved by the EMA and never by gradients."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


class BootstrapObjective(Objective):
    """Online encoder→projector→predictor and an EMA target encoder→projector (BYOL, FlowE, PooDLe).

    Each head is built once, here. ``projector`` may name ``in_channels``, the width of the map it
    reads: the encoder's by default, a decoder's for a subclass that puts one in between (PooDLe).
    :attr:`momentum_pairs` lists the (online, target) modules the EMA moves; a subclass that adds a
    target module (:func:`momentum_copy`) extends it through ``super().momentum_pairs``, as solo-learn's
    ``BaseMomentumMethod`` does.
    """

    def __init__(self, encoder: dict[str, Any], projector: dict[str, int] | None = None,
                 predictor: dict[str, int] | None = None, base_momentum: float = 0.996) -> None:
        super().__init__(encoder)
        projector = {"in_channels": self.encoder.out_channels, "hidden_channels": 4096, "out_channels": 256,
                     **(projector or {})}
        predictor = {"hidden_channels": 4096, **(predictor or {})}
        self.projector = MLPHead(**projector)
        self.predictor = MLPHead(self.projector.out_channels, out_channels=self.projector.out_channels,
                                 **predictor)
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector)
        self.base_momentum = base_momentum

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) pairs the EMA updates, in a fixed order; extend with ``super()``."""
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    @torch.no_grad()
    def momentum_update(self, tau: float) -> None:
        """ξ ← τ·ξ + (1 − τ)·θ for parameters; buffers (BN running stats) are copied as in BYOL."""
        for online, target in self.momentum_pairs:
            online_p = list(online.parameters())
            target_p = list(target.parameters())
            torch._foreach_lerp_(target_p, online_p, 1 - tau)
            for bo, bt in zip(online.buffers(), target.buffers(), strict=True):
                bt.copy_(bo)

    def after_step(self, step: int, max_steps: int) -> dict[str, float]:
        tau = ema_momentum(step, max_steps, self.base_momentum)
        self.momentum_update(tau)
        return {"tau": tau}

    def target_forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.target_projector(self.target_encoder(x))
