"""Algorithm 1's image-resolution loss in bands of rows equals the straightforward version."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.data.synthetic import MovingShapesVideo
from pretrain.flow.warp import pixel_coords, warp
from pretrain.geometry import random_affine
from pretrain.objectives.flowe import FlowE, _warped_rows, _warped_taps, equivariance_loss, upsampled_at


def test_upsampled_at_reads_interpolate_at_any_pixel():
    x = torch.randn(2, 5, 6, 9)
    full = F.interpolate(x, size=(48, 72), mode="bilinear", align_corners=False)
    ys, xs = torch.randint(0, 48, (2, 7, 11)).float(), torch.randint(0, 72, (2, 7, 11)).float()
    got = upsampled_at(x, xs, ys, (48, 72))
    want = torch.stack([full[b][:, ys[b].long(), xs[b].long()] for b in range(2)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_both_band_warps_equal_warping_the_upsampled_map():
    """The two ways a band reads z upsampled-then-warped — the rows it touches, or four taps per
    pixel (chosen by how many rows the targets span) — equal ``warp`` over the whole upsampled map."""
    b, c, h, w = 2, 6, 40, 56
    z = torch.randn(b, c, h // 8, w // 8)
    full = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
    q = pixel_coords(h, w, z.device).expand(b, -1, -1, -1)
    yy = q[:, 1:2]
    shift = torch.cat([2.3 + 0 * yy, -1.7 + 0.05 * yy], 1)  # rows move by little: the rows path
    rotate = torch.cat([0.4 * (yy - h / 2), 0.5 * (q[:, :1] - w / 2)], 1)  # far-away rows: the taps path
    for t in (shift, rotate):
        want, inside = warp(full, t)
        weight = inside.float()
        for r0, r1 in ((0, 8), (8, 15), (15, h)):
            band = slice(r0, r1)
            target = (q + t)[:, :, band]
            rows = _warped_rows(z, target, weight[:, band], (h, w))
            taps = _warped_taps(z, target, (h, w))
            keep = inside[:, None, band]
            torch.testing.assert_close(rows * keep, want[:, :, band] * keep, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(taps * keep, want[:, :, band] * keep, rtol=1e-5, atol=1e-5)


def _batch(h: int = 64, w: int = 128, b: int = 2) -> dict[str, torch.Tensor]:
    """Real flow with occlusions (the synthetic video's exact flow) and random affine views."""
    rng = np.random.default_rng(0)
    flows = [MovingShapesVideo(s, h, w, object_speed=2.0).flow(0, 3) for s in range(b)]
    fw = torch.stack([f["flow"] for f in flows])
    valid = torch.stack([f["valid"] for f in flows])
    a1 = torch.stack([random_affine(rng, (h, w), rotation=20.0) for _ in range(b)])
    a2 = torch.stack([random_affine(rng, (h, w), rotation=20.0) for _ in range(b)])
    return {"view1": torch.randn(b, 3, h, w), "view2": torch.randn(b, 3, h, w), "affine1": a1, "affine2": a2,
            "flow_fw": fw, "flow_bw": fw.clone(), "valid_fw": valid, "valid_bw": valid.clone()}


def test_banded_loss_and_every_gradient_equal_the_straightforward_loss():
    batch = _batch()
    assert 0.05 < (~batch["valid_fw"]).float().mean() < 0.5  # real occlusions and frame borders
    grads, losses = {}, {}
    for rows in (0, 7):  # 0: whole maps at once; 7 rows: bands that do not divide the height
        torch.manual_seed(0)
        model = FlowE({"arch": "resnet14", "output_stride": 8}, loss_resolution="image", symmetric=False,
                      projector={"hidden_channels": 32, "out_channels": 16}, predictor={"hidden_channels": 32},
                      loss_chunk_rows=rows)
        out = model(batch)
        out["loss"].backward()
        losses[rows] = out["loss"].detach()
        grads[rows] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(losses[7], losses[0], rtol=1e-5, atol=0)
    assert grads[0].keys() == grads[7].keys() and len(grads[0]) > 10
    scale = max(g.abs().max().item() for g in grads[0].values())  # biases before BN have ~0 gradient: noise
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[7][name], g, rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_banded_loss_keeps_no_full_resolution_map_for_backward():
    """What autograd keeps between forward and backward: the straightforward loss holds upsampled
    maps of C × H × W; the banded one only its inputs (the feature maps) and T."""
    b, c, h, w = 2, 64, 128, 256
    p = torch.randn(b, c, h // 8, w // 8, requires_grad=True)
    z = torch.randn(b, c, h // 8, w // 8)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(b, 2, 3)
    flow, valid = torch.full((b, 2, h, w), 3.0), torch.ones(b, h, w, dtype=torch.bool)
    kept: dict[int, int] = {}
    for rows in (0, 32):
        saved: list[weakref.ref] = []

        def pack(t: torch.Tensor, saved=saved) -> torch.Tensor:
            saved.append(weakref.ref(t))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = equivariance_loss(p, z, eye, eye, flow, valid, (h, w), "image", rows)
        gc.collect()
        kept[rows] = max((t.numel() for r in saved if (t := r()) is not None), default=0)  # alive until backward
        loss.backward()
    assert kept[0] >= b * c * h * w  # an upsampled map
    assert kept[32] < b * c * h * w // 8
