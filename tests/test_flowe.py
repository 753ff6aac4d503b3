"""The FlowE objective: eq. 5, equivariance, the two loss resolutions, and a short run."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.api import Trainer, load_config
from pretrain.data.synthetic import MovingShapesVideo
from pretrain.geometry import random_affine, render_view
from pretrain.losses import equivariance_loss, flowe_loss
from pretrain.objectives import BYOL
from pretrain.objectives.flowe import FlowE

from .conftest import REPO

FLOWE_DEMO = REPO / "configs" / "pretrain" / "flowe_r14_synthetic_demo.py"


def test_flowe_loss_is_eq5_on_hand_made_features():
    p = torch.zeros(1, 2, 1, 3)
    z = torch.zeros(1, 2, 1, 3)
    p[0, :, 0, 0], z[0, :, 0, 0] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0])   # ⟂ → 2
    p[0, :, 0, 1], z[0, :, 0, 1] = torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])   # ∥ → 0
    p[0, :, 0, 2], z[0, :, 0, 2] = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])  # opposite → 4
    all_valid = torch.ones(1, 1, 3, dtype=torch.bool)
    assert torch.isclose(flowe_loss(p, z, all_valid), torch.tensor(2.0))
    assert torch.isclose(flowe_loss(p, z, torch.tensor([[[True, True, False]]])), torch.tensor(1.0))
    p.requires_grad_(True)
    z.requires_grad_(True)
    flowe_loss(p, z, all_valid).backward()
    assert z.grad is None and p.grad is not None


def _pair(seed: int = 0, size=(64, 128)):
    video = MovingShapesVideo(seed, *size, num_objects=4, object_speed=2.0)
    rng = np.random.default_rng(seed)
    a1, a2 = random_affine(rng, size)[None], random_affine(rng, size)[None]
    v1 = render_view(video.render(0)["image"][None], a1)
    v2 = render_view(video.render(1)["image"][None], a2)
    gt = video.flow(0, 1)
    return v1, v2, a1, a2, gt["flow"][None], gt["valid"][None]


def test_equivariant_identity_network_has_near_zero_loss():
    """If the "network" is the identity on pixels (equivariant by construction), p₁ and warped z₂
    coincide: the loss vanishes with the right T and not with a wrong one."""
    v1, v2, a1, a2, flow, valid = _pair()
    lift = lambda v: torch.cat([v, torch.ones_like(v[:, :1])], 1)  # noqa: E731 - avoid 0-vectors in normalisation
    loss, frac = equivariance_loss(lift(v1), lift(v2), a1, a2, flow, valid, (64, 128), "image")
    wrong, _ = equivariance_loss(lift(v1), lift(v2), a1, a1, flow * 0, valid, (64, 128), "image")
    assert frac > 0.2 and loss < 0.01 and wrong > 10 * loss, (loss, wrong)


def test_image_and_feature_resolution_losses_agree_on_smooth_inputs():
    torch.manual_seed(0)
    v1, v2, a1, a2, flow, valid = _pair(3)
    cam = MovingShapesVideo(5, 64, 128, num_objects=0, camera_speed=2.0, zoom_rate=0.02).flow(0, 1)
    flow, valid = cam["flow"][None], cam["valid"][None]
    # smooth feature maps at stride 8: bilinear upsampling of a coarse random field
    p = F.interpolate(torch.randn(1, 16, 3, 5), size=(8, 16), mode="bilinear", align_corners=False)
    z = F.interpolate(torch.randn(1, 16, 3, 5), size=(8, 16), mode="bilinear", align_corners=False)
    img, _ = equivariance_loss(p, z, a1, a2, flow, valid, (64, 128), "image")
    feat, _ = equivariance_loss(p, z, a1, a2, flow, valid, (64, 128), "feature")
    assert abs(img - feat) / img < 0.1, (img, feat)


def test_gradients_reach_only_the_online_branch():
    torch.manual_seed(0)
    model = FlowE({"arch": "resnet14"}, projector={"hidden_channels": 32, "out_channels": 16},
                  predictor={"hidden_channels": 32}).train()
    v1, v2, a1, a2, flow, valid = _pair()
    batch = {"view1": v1.repeat(2, 1, 1, 1), "view2": v2.repeat(2, 1, 1, 1), "affine1": a1.repeat(2, 1, 1),
             "affine2": a2.repeat(2, 1, 1), "flow_fw": flow.repeat(2, 1, 1, 1), "flow_bw": flow.repeat(2, 1, 1, 1),
             "valid_fw": valid.repeat(2, 1, 1), "valid_bw": valid.repeat(2, 1, 1)}
    out = model(batch)
    out["loss"].backward()
    assert 0 < out["valid_fraction"] <= 1
    for name, p in model.named_parameters():
        assert (p.grad is None) == name.startswith("target_"), name
    assert not any(k.startswith("_flow") for k in model.state_dict())


def test_symmetric_branch_uses_the_backward_flow(monkeypatch):
    """ℓ(v₂ → v₁) must warp with M₂→₁ and its validity, not M₁→₂. The pair's flows differ (objects
    and camera move; occlusions differ), so a branch that reuses the forward flow is caught twice:
    by what it is given, and by the loss of an equivariant network."""
    size = (64, 128)
    video = MovingShapesVideo(1, *size, num_objects=4, object_speed=3.0, camera_speed=2.0)
    fw, bw = video.flow(0, 1), video.flow(1, 0)
    assert (fw["flow"] - bw["flow"]).abs().mean() > 1 and not torch.equal(fw["valid"], bw["valid"])
    rng = np.random.default_rng(2)
    a1, a2 = random_affine(rng, size)[None], random_affine(rng, size)[None]
    v1 = render_view(video.render(0)["image"][None], a1)
    v2 = render_view(video.render(1)["image"][None], a2)
    lift = lambda v: torch.cat([v, torch.ones_like(v[:, :1])], 1)  # noqa: E731 - an equivariant "network"
    right, _ = equivariance_loss(lift(v2), lift(v1), a2, a1, bw["flow"][None], bw["valid"][None], size, "image")
    wrong, _ = equivariance_loss(lift(v2), lift(v1), a2, a1, fw["flow"][None], fw["valid"][None], size, "image")
    assert right < 0.01 and wrong > 5 * right, (right, wrong)

    model = FlowE({"arch": "resnet14"}, projector={"hidden_channels": 16, "out_channels": 8},
                  predictor={"hidden_channels": 16}, symmetric=True)
    batch = {"view1": v1, "view2": v2, "affine1": a1, "affine2": a2, "flow_fw": fw["flow"][None],
             "flow_bw": bw["flow"][None], "valid_fw": fw["valid"][None], "valid_bw": bw["valid"][None]}
    calls = []
    real = equivariance_loss

    def spy(p, z, aff_a, aff_b, flow_ab, valid_ab, *args):
        calls.append((aff_a, aff_b, flow_ab, valid_ab))
        return real(p, z, aff_a, aff_b, flow_ab, valid_ab, *args)

    monkeypatch.setattr(model, "equivariance_loss", spy)  # the objective's loss, as the step benchmark wraps it
    model(batch)
    assert len(calls) == 2
    (a_1, b_1, f_1, m_1), (a_2, b_2, f_2, m_2) = calls
    assert a_1 is a1 and b_1 is a2 and f_1 is batch["flow_fw"] and m_1 is batch["valid_fw"]
    assert a_2 is a2 and b_2 is a1 and f_2 is batch["flow_bw"] and m_2 is batch["valid_bw"]



def test_non_pixel_flowe_is_byol_on_the_two_views():
    """Table 4's "non pixel-based" FlowE (``dense=False``) is the BYOL objective it extends: from the
    same seed the same weights, the same loss and gradients, every location valid."""
    heads = {"projector": {"hidden_channels": 32, "out_channels": 16}, "predictor": {"hidden_channels": 32}}
    torch.manual_seed(0)
    flowe = FlowE({"arch": "resnet14"}, dense=False, **heads)
    torch.manual_seed(0)
    byol = BYOL({"arch": "resnet14"}, **heads)
    assert isinstance(flowe, BYOL) and flowe.state_dict().keys() == byol.state_dict().keys()
    assert all(torch.equal(v, byol.state_dict()[k]) for k, v in flowe.state_dict().items())
    v1, v2, a1, a2, _, _ = _pair()
    batch = {"view1": v1.repeat(2, 1, 1, 1), "view2": v2.repeat(2, 1, 1, 1), "affine1": a1.repeat(2, 1, 1),
             "affine2": a2.repeat(2, 1, 1)}
    got, want = flowe(batch), byol(batch)
    assert torch.equal(got["loss"], want["loss"]) and got["valid_fraction"] == 1
    got["loss"].backward()
    want["loss"].backward()
    for (name, p), q in zip(flowe.named_parameters(), byol.parameters(), strict=True):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), name

def test_short_flowe_run_lowers_the_loss(tmp_path):
    opts = {"max_iters": 30, "checkpoint_interval": 30, "batch_size": 4, "num_workers": 0, "device": "cpu",
            "quiet": True, "log_interval": 1, "model.projector.hidden_channels": 64,
            "model.predictor.hidden_channels": 64}
    Trainer(load_config(FLOWE_DEMO, opts), tmp_path).train()
    losses = [json.loads(r)["loss"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.7 * first, (first, last)
