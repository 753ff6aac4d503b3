"""Shared fixtures: the real sample data folder (skip when absent) and a tiny CPU config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pretrain.api  # noqa: F401  (registers objectives and datasets)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_CONFIG = REPO / "configs" / "pretrain" / "byol_r14_synthetic_demo.py"

# A BYOL run small enough for a unit test: 32×64 crops, narrow heads, CPU, deterministic.
TINY = {
    "batch_size": 4, "max_iters": 6, "checkpoint_interval": 3, "num_workers": 0, "device": "cpu",
    "deterministic": True, "quiet": True, "log_interval": 1,
    "data.crop_size": (32, 64), "data.height": 64, "data.width": 128, "data.num_videos": 4,
    "model.projector.hidden_channels": 32, "model.projector.out_channels": 16,
    "model.predictor.hidden_channels": 32,
}


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def cli_options(options: dict) -> list[str]:
    """``--cfg-options`` words for an options dict (tuples as comma lists)."""
    return [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in options.items()]


def tiny_poodle(channels: int = 64):
    """A small PooDLe (ResNet-14, narrow heads) from seed 0, for checkpoint and export tests."""
    from pretrain.objectives.poodle import PooDLe

    torch.manual_seed(0)
    small = {"hidden_channels": 16, "out_channels": 8}
    return PooDLe({"arch": "resnet14", "output_stride": 32}, decoder={"channels": channels, "hidden_factor": 0.5},
                  projector=small, predictor={"hidden_channels": 16}, pooled_projector=small,
                  pooled_predictor={"hidden_channels": 16})
