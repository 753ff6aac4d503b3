"""LARS, parameter groups, and the per-iteration schedules (LR and BYOL's EMA momentum)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as BYOL/FlowE use it: SGD with momentum whose step for each weight
    tensor is scaled by the trust ratio η‖w‖/‖g + λw‖.

    Groups with ``lars_exclude=True`` (biases and norm parameters, FlowE §4.2) get neither the
    adaptation nor weight decay, matching BYOL's reference implementation.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 0.001, lars_exclude: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        lars_exclude=lars_exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        d_p = d_p.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d_p)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    d_p = d_p.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d_p.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def is_excluded(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation parameters: every 1-D tensor (BN weight/bias, conv/linear bias)."""
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: regular weights (decay + adaptation) and excluded ones (neither)."""
    regular, excluded = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (excluded if is_excluded(name, p) else regular).append(p)
    return [
        {"params": regular, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    from .config import ConfigError, check_kwargs

    cfg = dict(cfg)
    kind = cfg.pop("type", "LARS")
    wd = cfg.pop("weight_decay", 0.0)
    classes = {"LARS": LARS, "SGD": torch.optim.SGD, "AdamW": torch.optim.AdamW}
    if kind not in classes:
        raise ConfigError(f"unknown optimizer '{kind}'; choose LARS, SGD or AdamW")
    check_kwargs(classes[kind], {k: v for k, v in cfg.items() if k != "lars_exclude"}, "optimizer")
    groups = param_groups(model, wd)
    if kind == "LARS":
        return LARS(groups, **cfg)
    for g in groups:  # SGD/AdamW know nothing of lars_exclude; the key is harmless metadata
        g.pop("lars_exclude")
    if kind == "SGD":
        return torch.optim.SGD(groups, **cfg)
    if kind == "AdamW":
        return torch.optim.AdamW(groups, **cfg)
    raise KeyError(f"unknown optimizer '{kind}'; choose LARS, SGD or AdamW")


def cosine_lr_factor(step: int, max_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> float:
    """Linear warm-up then cosine decay without restarts (Loshchilov & Hutter), as a factor of lr."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def ema_momentum(step: int, max_steps: int, base: float = 0.996) -> float:
    """BYOL's target momentum τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2: τ_base at k=0, 1 at k=K."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, max_steps)) + 1) / 2
