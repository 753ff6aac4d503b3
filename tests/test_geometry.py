"""FlowE view geometry: affines, view rendering, and the composition T = A1⁻¹ ∘ M ∘ A2 (eq. 4)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.data.coloured_shapes import ColouredShapesVideo
from pretrain.data.synthetic import MovingShapesVideo, ShapeWorld
from pretrain.flow import warp
from pretrain.geometry import apply_affine, invert_affine, random_affine, render_view, view_flow


def test_random_affine_ranges_and_inverse():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = random_affine(rng, (64, 128), scale=(0.5, 2.0), rotation=30.0)
        lin = a[:, :2]
        s = torch.linalg.det(lin).sqrt()
        angle = torch.rad2deg(torch.atan2(lin[1, 0], lin[0, 0]))
        assert 0.5 - 1e-5 <= s <= 2.0 + 1e-5 and -30 - 1e-4 <= angle <= 30 + 1e-4
        c = torch.tensor([[63.5], [31.5]]).reshape(1, 2, 1, 1)
        assert torch.allclose(apply_affine(a[None], c), c, atol=1e-4)  # rotation/scale about the centre
        p = torch.randn(1, 2, 3, 3) * 50
        assert torch.allclose(apply_affine(invert_affine(a)[None], apply_affine(a[None], p)), p, atol=1e-3)


def test_render_view_places_source_pixels_at_a_p():
    img = torch.zeros(1, 1, 40, 60)
    img[0, 0, 10, 20] = 1.0
    a = torch.tensor([[[1.0, 0.0, 5.0], [0.0, 1.0, -3.0]]])  # shift by (+5, −3)
    view = render_view(img, a)
    assert torch.isclose(view[0, 0, 7, 25], torch.tensor(1.0)) and torch.isclose(view.sum(), torch.tensor(1.0))


def _composition_error(video: ShapeWorld, seed: int, dt: float) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    size = (video.height, video.width)
    f1, f2 = video.render(0)["image"][None], video.render(dt)["image"][None]
    gt = video.flow(0, dt)
    a1, a2 = random_affine(rng, size)[None], random_affine(rng, size)[None]
    v1, v2 = render_view(f1, a1), render_view(f2, a2)
    t, valid = view_flow(a1, a2, gt["flow"][None], gt["valid"][None], size)
    aligned, inside = warp(v2, t)
    mask = valid & inside
    err = (aligned - v1).abs().mean(1)[mask]
    return err.quantile(0.9).item(), (v2 - v1).abs().mean(1)[mask].mean().item(), mask.float().mean().item()


def test_composition_recovers_camera_motion_under_random_affines():
    # the first world's smooth background: the 1 % bound measures the composition, not bilinear
    # resampling of the crowded world's sharp region edges
    video = ColouredShapesVideo(4, num_objects=0, camera_speed=4.0, zoom_rate=0.05)
    for seed in range(5):
        err90, unaligned, frac = _composition_error(video, seed, dt=2.0)
        assert frac > 0.1
        assert err90 < 0.01 and err90 < unaligned / 5, (seed, err90, unaligned)


def test_composition_recovers_independent_object_motions():
    video = MovingShapesVideo(9, num_objects=6, object_speed=3.0, rotation_speed=0.1)
    for seed in range(5):
        err90, unaligned, _ = _composition_error(video, seed, dt=1.0)
        assert err90 < 0.03 and err90 < unaligned / 3, (seed, err90, unaligned)


def test_feature_stride_grid_matches_downsampled_image_field():
    """At stride s the field equals the full-resolution field sampled at s·k + (s−1)/2, divided by s,
    for an affine (hence linear) camera motion."""
    video = MovingShapesVideo(1, num_objects=0, camera_speed=3.0, zoom_rate=0.03)
    gt = video.flow(0, 1)
    rng = np.random.default_rng(3)
    a1, a2 = random_affine(rng, (128, 256))[None], random_affine(rng, (128, 256))[None]
    full, vfull = view_flow(a1, a2, gt["flow"][None], gt["valid"][None], (128, 256))
    feat, vfeat = view_flow(a1, a2, gt["flow"][None], gt["valid"][None], (128, 256), stride=8)
    assert feat.shape == (1, 2, 16, 32)
    # average-pooling an affine field gives its value at the cell centre 8k + 3.5
    pooled = F.avg_pool2d(full * vfull[:, None], 8) / F.avg_pool2d(vfull[:, None].float(), 8).clamp(min=1e-6)
    both = vfeat & (F.avg_pool2d(vfull[:, None].float(), 8)[:, 0] == 1)
    assert both.sum() > 20
    torch.testing.assert_close((pooled / 8)[both.expand(2, -1, -1)[None]], feat[both.expand(2, -1, -1)[None]],
                               atol=2e-3, rtol=0)
