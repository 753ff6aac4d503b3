"""Encoders that are not trained by flowssl but saved in its checkpoint format, so the readout
tools treat them like any pretrained method: FlowE Table 1's "Rand Init" (readout from a random
projection) and Table 2's "Supervised ImageNet" (torchvision's ResNet-50 weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..fileio import safe_torch_load, torchvision_weights_file
from ..registry import OBJECTIVES
from .base import Objective


class FixedEncoder(Objective):
    """No loss and no optimiser: the trainer writes one checkpoint at iteration 0."""

    trainable = False

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise RuntimeError(f"{self.method} has nothing to train; 'flowssl pretrain' only exports it")


@OBJECTIVES.register_module(name="rand_init")
class RandInit(FixedEncoder):
    """torchvision's default initialisation of the encoder, seeded by the config's ``seed``."""

    method = "rand_init"


@OBJECTIVES.register_module(name="imagenet_supervised")
class ImageNetSupervised(FixedEncoder):
    """torchvision's supervised ResNet weights (``IMAGENET1K_V1`` is the file FlowE used), from a local
    ``checkpoint`` or torchvision's cache; never downloaded implicitly."""

    method = "imagenet_supervised"

    def __init__(self, encoder: dict[str, Any], weights: str = "IMAGENET1K_V1", checkpoint: str | None = None) -> None:
        super().__init__(encoder)
        from torchvision.models import ResNet50_Weights, ResNet101_Weights

        arch = self.encoder.arch
        table = {"resnet50": ResNet50_Weights, "resnet101": ResNet101_Weights}
        if arch not in table:
            raise KeyError(f"torchvision has no ImageNet weights for '{arch}'; use resnet50 or resnet101")
        w = table[arch][weights]
        if checkpoint is None:
            checkpoint = str(torchvision_weights_file(w.url, f"ImageNet {arch}", "model.checkpoint"))
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"ImageNet checkpoint {checkpoint} does not exist")
        state = safe_torch_load(checkpoint, what="ImageNet checkpoint")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{checkpoint} holds a {type(state).__name__}, not a torchvision {arch} state dict")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{checkpoint} is not a torchvision {arch} state dict "
                             f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")
