"""Geometry stays fp32 under bf16 autocast (the trainer's GPU path), emulated with CPU autocast.

CPU autocast lowers matmul/bmm/einsum/conv to bf16 as CUDA autocast does, so a coordinate computed
in bf16 shows up here exactly as on a GPU: integers above 512 are 4 px apart.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from pretrain import losses as losses_mod
from pretrain.api import load_config
from pretrain.flow import RAFTFlow, warp
from pretrain.flow.sources import FlowPair
from pretrain.geometry import random_affine, render_view, view_flow
from pretrain.losses import (
    affine_motion_loss,
    cross_pixel_similarity_loss,
    flow_bins,
    histogram_entropy_loss,
    normalize_flow_log,
)
from pretrain.models import HypercolumnHead
from pretrain.objectives.crosspixel import flow_in_view
from pretrain.precision import fp32, fp32_geometry
from pretrain.registry import DATASETS, OBJECTIVES, build_from

from .conftest import REPO

H, W = 512, 1024  # the paper's crop: coordinates up to 1023, where bf16 steps are 4 px
FLOWE_DEMO = REPO / "configs" / "pretrain" / "flowe_r14_synthetic_demo.py"


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _grid(h: int = H, w: int = W) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")


def _smooth_flow(h: int = H, w: int = W) -> torch.Tensor:
    """[1,2,h,w] a flow that varies along y in x and along x in y, a few to 10 px."""
    ys, xs = _grid(h, w)
    return torch.stack([6 + 4 * torch.sin(ys / 90), -3 + 2 * torch.cos(xs / 130)])[None]


def _frame(dx: float = 0.0, dy: float = 0.0) -> torch.Tensor:
    """[1,3,H,W] an analytic texture (periods 30-70 px) shifted by (dx, dy): frame(d)[p] = frame()[p − d]."""
    ys, xs = _grid()
    x, y = xs - dx, ys - dy
    return torch.stack([torch.sin(x / 5) * torch.cos(y / 7), torch.cos((x + y) / 9), torch.sin(x / 11 - y / 6)])[None]


def _paper_affines(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)  # FlowE §3.3: scale 0.5–2, rotation ±30°
    return random_affine(rng, (H, W), scale=(0.5, 2.0), rotation=30.0)[None], \
        random_affine(rng, (H, W), scale=(0.5, 2.0), rotation=30.0)[None]


def test_cpu_autocast_lowers_matmul_like_cuda():
    """The emulation these tests rely on: if CPU autocast stopped lowering matmul, they would prove nothing."""
    a = torch.full((2, 2), 1000.0)
    with bf16():
        assert (a @ a).dtype == torch.bfloat16
        assert torch.einsum("ij,jk->ik", a, a).dtype == torch.bfloat16
        with fp32_geometry():
            assert (a @ a).dtype == torch.float32
        assert (a @ a).dtype == torch.bfloat16  # restored after the block


def test_fp32_decorator_casts_half_inputs_only_and_keeps_gradients():
    @fp32
    def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x @ y).sum()

    x = torch.randn(3, 3, dtype=torch.bfloat16, requires_grad=True)
    y64 = torch.randn(3, 3, dtype=torch.float64)
    with bf16():
        out = f(x, torch.eye(3))
        assert out.dtype == torch.float32
        assert f(x.detach().double(), y64).dtype == torch.float64  # fp64 is not lowered to fp32
    out.backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("stride", [1, 8])
def test_view_flow_under_bf16_autocast_matches_fp32_at_512x1024(stride):
    flow, valid = _smooth_flow(), torch.ones(1, H, W, dtype=torch.bool)
    for seed in range(2):
        a1, a2 = _paper_affines(seed)
        t32, v32 = view_flow(a1, a2, flow, valid, (H, W), stride)
        with bf16():
            t16, v16 = view_flow(a1, a2, flow, valid, (H, W), stride)
        assert t16.dtype == torch.float32 and v32.float().mean() > 0.2
        assert torch.equal(v16, v32)
        err = (t16 - t32).norm(dim=1)[v32] * stride  # in view pixels
        assert err.max() < 0.05, (seed, err.mean().item(), err.max().item())


def test_warp_under_bf16_autocast_matches_fp32_at_512x1024():
    """Warping a coordinate map returns p + flow: the grid must not be built in bf16, also when the flow
    (e.g. T cast to a bf16 feature dtype) and the features arrive in bf16."""
    ys, xs = _grid()
    coords = torch.stack([xs, ys])[None]
    flow = (_smooth_flow() * 8).round() / 8  # exactly representable in bf16: only the grid can err
    out32, in32 = warp(coords, flow)
    with bf16():
        out16, in16 = warp(coords, flow.bfloat16())
        feats, _ = warp(coords.bfloat16().requires_grad_(True), flow)
    assert out16.dtype == torch.float32 and feats.dtype == torch.float32 and torch.equal(in16, in32)
    assert (out16 - out32)[:, :, in32[0]].abs().max() < 0.05
    torch.testing.assert_close(out32[:, :, in32[0]], (coords + flow)[:, :, in32[0]], atol=1e-3, rtol=0)
    feats.sum().backward()  # the gradient reaches the bf16 features through the fp32 sampling


def test_render_view_and_occlusion_are_fp32_under_autocast():
    a1, _ = _paper_affines(3)
    img = _frame()
    with bf16():
        view16 = render_view(img, a1)
        pair16 = FlowPair.from_consistency(_smooth_flow().bfloat16(), -_smooth_flow().bfloat16())
    assert view16.dtype == pair16.fw.dtype == torch.float32
    torch.testing.assert_close(view16, render_view(img, a1), atol=1e-6, rtol=0)
    pair32 = FlowPair.from_consistency(_smooth_flow().bfloat16().float(), -_smooth_flow().bfloat16().float())
    assert torch.equal(pair16.valid_fw, pair32.valid_fw) and torch.equal(pair16.valid_bw, pair32.valid_bw)


def test_equivariant_network_loss_keeps_its_fp32_value_under_autocast():
    """The identity on pixels is exactly equivariant: its FlowE loss (Algorithm 1, 512×1024, the
    paper's affines) must not grow under bf16 (it did 3000×: 2e-5 → 0.05)."""
    d = (7.25, -3.5)  # frame 2 = frame 1 translated by d, and the exact flow M₁→₂ = d
    flow = torch.tensor(d).view(1, 2, 1, 1).expand(1, 2, H, W).contiguous()
    valid = torch.ones(1, H, W, dtype=torch.bool)
    a1, a2 = _paper_affines(1)
    lift = lambda v: torch.cat([v, torch.ones_like(v[:, :1])], 1)  # noqa: E731 - avoid 0-vectors
    p, z = lift(render_view(_frame(), a1)), lift(render_view(_frame(*d), a2))
    loss32, frac32 = losses_mod.equivariance_loss(p, z, a1, a2, flow, valid, (H, W), "image")
    with bf16():
        loss16, frac16 = losses_mod.equivariance_loss(p, z, a1, a2, flow, valid, (H, W), "image")
        loss_bf16_maps, _ = losses_mod.equivariance_loss(p.bfloat16(), z.bfloat16(), a1, a2, flow, valid, (H, W),
                                                        "image")
    assert frac32 > 0.2 and loss32 < 1e-3
    assert loss16.dtype == torch.float32 and frac16 == frac32
    torch.testing.assert_close(loss16, loss32, atol=1e-7, rtol=1e-5)
    assert loss_bf16_maps < loss32 + 1e-4  # bf16 feature *values* cost nothing measurable; coordinates did


def _demo_model_and_batch():
    opts = {"model.projector.hidden_channels": 32, "model.projector.out_channels": 16,
            "model.predictor.hidden_channels": 32, "data.num_videos": 2}
    cfg = load_config(FLOWE_DEMO, opts)
    torch.manual_seed(0)
    model = build_from(OBJECTIVES, dict(cfg.model), "objective").train()
    data = build_from(DATASETS, dict(cfg.data), "dataset", seed=0)
    return model, default_collate([data[0], data[1]])


def test_one_flowe_demo_step_under_autocast_matches_fp32(monkeypatch):
    """The trainer's GPU step (objective under bf16 autocast) against fp32: T and its mask equal,
    the loss within bf16 encoder noise, the gradients pointing the same way."""
    model32, batch = _demo_model_and_batch()
    model16 = copy.deepcopy(model32)
    fields: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(*args, **kwargs):
        out = view_flow(*args, **kwargs)
        fields.append(out)
        return out

    monkeypatch.setattr(losses_mod, "view_flow", spy)
    out32 = model32(batch)
    out32["loss"].backward()
    with bf16():
        out16 = model16(batch)
    out16["loss"].backward()
    assert out16["loss"].dtype == torch.float32 and len(fields) == 4  # symmetric: 2 directions × 2 runs
    for (t32, v32), (t16, v16) in zip(fields[:2], fields[2:], strict=True):
        assert torch.equal(t32, t16) and torch.equal(v32, v16)  # the geometry is fp32, bit for bit
    assert abs(out16["loss"] - out32["loss"]) / out32["loss"] < 0.03, (out16["loss"], out32["loss"])
    assert out16["valid_fraction"] == out32["valid_fraction"]
    g32 = torch.cat([p.grad.flatten() for p in model32.parameters() if p.grad is not None])
    g16 = torch.cat([p.grad.flatten() for p in model16.parameters() if p.grad is not None])
    # bf16 convolutions in the backward pass: cos ≈ 0.93 measured; a broken gradient would be ≈ 0
    assert g32.shape == g16.shape and torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.8


def test_raft_runs_in_fp32_under_autocast_unless_asked(tmp_path):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    torch.save(raft_small(weights=None).state_dict(), tmp_path / "raft_small_local.pth")
    source = RAFTFlow("small", checkpoint=str(tmp_path / "raft_small_local.pth"), num_flow_updates=2)
    img1, img2 = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    ref = source(img1, img2)
    with bf16():
        got = source(img1, img2)
    assert got.fw.dtype == torch.float32
    torch.testing.assert_close(got.fw, ref.fw, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.valid_fw, ref.valid_fw)
    source.amp = True  # flow.amp=True: RAFT itself in bf16 (its output still comes back fp32)
    low = source(img1, img2)
    assert low.fw.dtype == torch.float32 and not torch.equal(low.fw, ref.fw)


# -- the other objectives ----------------------------------------------------------------------------------

def test_hypercolumn_sampling_reads_the_right_pixel_under_autocast():
    """A stride-1 'stage' holding the parity of x and of y: read at pixel centres the answer is 0/1
    exactly — unless the grid is rounded to bf16 (2-px steps near the border of a 1024-px width)."""
    ys, xs = _grid(8, W)
    parity = torch.stack([xs % 2, ys % 2])[None].bfloat16()  # bf16 features, as from an autocast encoder
    head = HypercolumnHead({"s": 2}, stages=("s",), hidden_channels=4, out_channels=2)
    gen = torch.Generator().manual_seed(0)
    points = torch.stack([torch.randint(0, W, (1, 200), generator=gen),
                          torch.randint(0, 8, (1, 200), generator=gen)], -1).float()
    with bf16():
        cols = head.hypercolumns({"s": parity}, points, (8, W))
    assert cols.dtype == torch.float32
    torch.testing.assert_close(cols[0].T, points[0] % 2, atol=0, rtol=0)


def test_cross_pixel_flow_targets_are_fp32_under_autocast():
    """The cross-pixel configs use identity affines: under bf16 the view coordinates themselves
    would round (±2 px near x = 1000) and move the normalised flow and its class bins."""
    ys, xs = _grid()
    flow = torch.stack([40 * torch.sin(xs / 60) * torch.cos(ys / 45), 25 * torch.cos(xs / 80)])[None]
    eye = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    batch = {"affine1": eye, "flow_fw": flow, "valid_fw": torch.ones(1, H, W, dtype=torch.bool),
             "view1": torch.zeros(1, 3, H, W)}
    f32, v32 = flow_in_view(batch)
    with bf16():
        f16, v16 = flow_in_view(batch)
        bins16 = flow_bins(normalize_flow_log(f16.bfloat16().float()), 16)  # what a bf16 flow would give
    assert f16.dtype == torch.float32 and torch.equal(v16, v32)
    torch.testing.assert_close(f16, f32, atol=1e-4, rtol=0)
    assert torch.equal(flow_bins(normalize_flow_log(f16), 16), flow_bins(normalize_flow_log(f32), 16))
    assert not torch.equal(bins16, flow_bins(normalize_flow_log(f32), 16))  # the test can see a bf16 flow


def test_cross_pixel_kernel_and_softmax_are_fp32_under_autocast():
    torch.manual_seed(0)
    emb = torch.randn(2, 64, 16).bfloat16()
    flow = torch.rand(2, 64, 2) * 2 - 1
    sigma2 = torch.tensor(0.0067)  # the paper's learned σ²: a sharp kernel, sensitive to rounding
    with bf16():
        loss16 = cross_pixel_similarity_loss(emb, flow, sigma2)
    assert loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, cross_pixel_similarity_loss(emb.float(), flow, sigma2), atol=0, rtol=1e-6)


def test_s3_least_squares_and_histogram_are_fp32_under_autocast():
    torch.manual_seed(0)
    masks = torch.randn(2, 5, 16, 24).softmax(1).bfloat16()
    ys, xs = _grid(16, 24)
    flow = torch.stack([0.3 * xs - 2, 0.1 * ys + 1])[None].expand(2, -1, -1, -1) + torch.randn(2, 2, 16, 24)
    valid = torch.rand(2, 16, 24) > 0.2
    with bf16():
        affine16 = affine_motion_loss(masks, flow, valid)
        entropy16 = histogram_entropy_loss(masks, flow, valid)
    assert affine16.dtype == entropy16.dtype == torch.float32
    torch.testing.assert_close(affine16, affine_motion_loss(masks.float(), flow, valid), atol=0, rtol=1e-6)
    torch.testing.assert_close(entropy16, histogram_entropy_loss(masks.float(), flow, valid), atol=0, rtol=1e-6)
