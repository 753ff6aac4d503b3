"""Algorithm 1's image-resolution loss in bands of rows equals the straightforward version."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pretrain.losses as losses_mod
from pretrain.data.synthetic import MovingShapesVideo
from pretrain.flow.warp import pixel_coords, warp
from pretrain.geometry import random_affine, view_flow
from pretrain.losses import (
    equivariance_loss,
    image_resolution_loss,
    upsampled_at,
    warped_rows,
    warped_taps,
)
from pretrain.objectives.flowe import FlowE


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
            rows = warped_rows(z, target, weight[:, band], (h, w))
            taps = warped_taps(z, target, (h, w))
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


# -- every path of the banded loss, end to end (issue 21.7) ---------------------------------------------


def _geometry(h: int, w: int, b: int = 2, rotation: float = 20.0, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Affines of two views and the synthetic video's exact frame flow (real occlusions) at h × w."""
    rng = np.random.default_rng(seed)
    flows = [MovingShapesVideo(s, h, w, object_speed=2.0).flow(0, 3) for s in range(b)]
    aff = lambda: torch.stack([random_affine(rng, (h, w), rotation=rotation) for _ in range(b)])  # noqa: E731
    flow = torch.stack([f["flow"] for f in flows]).to(dtype)
    return aff().to(dtype), aff().to(dtype), flow, torch.stack([f["valid"] for f in flows])


def _maps(b: int, h: int, w: int, c: int = 6, seed: int = 0,
          dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Online p (a leaf) and target z on the stride-8 grid of an h × w view (ceil for any size)."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, c, -(-h // 8), -(-w // 8))
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(), torch.randn(*shape, generator=g, dtype=dtype)


def _loss_grad(p: torch.Tensor, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    p.grad = None
    loss, _ = equivariance_loss(p, *args, **kwargs)
    loss.backward()
    return loss.detach(), p.grad.clone()


class _CountTaps:
    """Counts the bands (per sample) read by the four-taps path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.real = losses_mod.warped_taps
        monkeypatch.setattr(losses_mod, "warped_taps", self)

    def __call__(self, *args: object) -> torch.Tensor:
        self.calls += 1
        return self.real(*args)


def _bands_with_valid(valid: torch.Tensor, rows: int) -> int:
    """(sample, band) pairs holding a valid pixel: the ones a forced taps path reads by taps."""
    return sum(int(valid[:, r0:r0 + rows].flatten(1).any(1).sum()) for r0 in range(0, valid.shape[1], rows))


@pytest.mark.parametrize("size", [(64, 128), (60, 100)])  # 60 × 100: not a multiple of 8 (8 × 13 grid)
@pytest.mark.parametrize("rows", [1, 7, 16, 60, 200])  # ≥ H: one band holds the whole view
@pytest.mark.parametrize("path", ["rows", "taps", "auto"])
def test_each_band_path_gives_the_straightforward_loss_and_gradient(size, rows, path, monkeypatch):
    h, w = size
    aff_a, aff_b, flow, valid = _geometry(h, w)
    p, z = _maps(2, h, w)
    args = (z, aff_a, aff_b, flow, valid, size, "image")
    want_loss, want_grad = _loss_grad(p, *args, chunk_rows=0)
    with torch.no_grad():
        _, used = image_resolution_loss(p, z, *view_flow(aff_a, aff_b, flow, valid, size), size, rows)
    taps = _CountTaps(monkeypatch)
    got_loss, got_grad = _loss_grad(p, *args, chunk_rows=rows, band_path=path)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5 * want_grad.abs().max().item())
    if path == "rows":
        assert taps.calls == 0
    elif path == "taps":
        assert taps.calls == _bands_with_valid(used, rows) > 0


def test_auto_band_path_takes_rows_for_small_motion_and_taps_for_large_rotation(monkeypatch):
    """Which path ran is observable: a shift moves rows by little (rows path only); a 30° view rotation
    makes a 4-row band read ~60 rows of z (four taps)."""
    h, w = 64, 128
    p, z = _maps(2, h, w)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    shift = torch.tensor([3.0, -1.5])[None, :, None, None].expand(2, 2, h, w)
    ones = torch.ones(2, h, w, dtype=torch.bool)
    taps = _CountTaps(monkeypatch)
    _loss_grad(p, z, eye, eye, shift, ones, (h, w), "image", chunk_rows=4)
    assert taps.calls == 0
    angle, centre = np.radians(30.0), torch.tensor([(w - 1) / 2, (h - 1) / 2])
    rot = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float32)
    turned = torch.cat([rot, (centre - rot @ centre)[:, None]], 1).expand(2, 2, 3)  # view b: turned 30°
    want = _loss_grad(p, z, eye, turned, shift, ones, (h, w), "image", chunk_rows=0)
    got = _loss_grad(p, z, eye, turned, shift, ones, (h, w), "image", chunk_rows=4)
    assert taps.calls > 0
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5 * want[1].abs().max().item())


@pytest.mark.parametrize("path", ["rows", "taps"])
def test_bands_without_a_valid_pixel_add_nothing(path):
    """Sample 0 has no valid pixel in its first two 8-row bands, sample 1 none at all: those bands
    add 0 to the loss and the gradient (no NaN from 0/0), the rest equals the straightforward loss;
    a batch without any valid pixel gives loss 0 and a zero gradient."""
    h, w = 40, 64
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    flow = torch.tensor([2.0, 1.0])[None, :, None, None].expand(2, 2, h, w)
    valid = torch.ones(2, h, w, dtype=torch.bool)
    valid[0, :16] = False
    valid[1] = False
    p, z = _maps(2, h, w)
    args = (z, eye, eye, flow, valid, (h, w), "image")
    want = _loss_grad(p, *args, chunk_rows=0)
    got = _loss_grad(p, *args, chunk_rows=8, band_path=path)
    assert torch.isfinite(got[0]) and torch.isfinite(got[1]).all()
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5 * want[1].abs().max().item())
    assert (got[1][1] == 0).all() and got[1][0].abs().sum() > 0
    loss, grad = _loss_grad(p, z, eye, eye, flow, torch.zeros_like(valid), (h, w), "image", chunk_rows=8,
                            band_path=path)
    assert loss == 0 and (grad == 0).all()


@pytest.mark.parametrize("path", ["rows", "taps", "auto"])
def test_poodle_both_directions_batch(path):
    """PooDLe's batch of 2B: online [v₁, v₂] against target [v₂, v₁] with [A₁, A₂] / [A₂, A₁] and
    [M₁→₂, M₂→₁]. Banded = straightforward; the loss is the valid-pixel-weighted mean of the two
    directions computed apart, and each half's gradient is that direction's gradient, weighted."""
    h, w = 56, 96
    a1, a2, _, _ = _geometry(h, w, rotation=10.0)
    videos = [MovingShapesVideo(s, h, w, object_speed=2.0) for s in range(2)]
    fw = [v.flow(0, 3) for v in videos]
    bw = [v.flow(3, 0) for v in videos]
    aff_a, aff_b = torch.cat([a1, a2]), torch.cat([a2, a1])
    flow = torch.cat([torch.stack([f["flow"] for f in fw]), torch.stack([f["flow"] for f in bw])])
    valid = torch.cat([torch.stack([f["valid"] for f in fw]), torch.stack([f["valid"] for f in bw])])
    p, z = _maps(4, h, w)
    args = (z, aff_a, aff_b, flow, valid, (h, w), "image")
    want = _loss_grad(p, *args, chunk_rows=0)
    got = _loss_grad(p, *args, chunk_rows=16, band_path=path)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=0)
    scale = want[1].abs().max().item()
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5 * scale)
    halves = []
    for part in (slice(0, 2), slice(2, 4)):
        q = p.detach()[part].clone().requires_grad_()
        t, ok = view_flow(aff_a[part], aff_b[part], flow[part], valid[part], (h, w))
        loss, used = image_resolution_loss(q, z[part], t, ok, (h, w), 16, path)
        loss.backward()
        halves.append((loss.detach(), q.grad, used.sum()))
    n = halves[0][2] + halves[1][2]
    torch.testing.assert_close(got[0], (halves[0][0] * halves[0][2] + halves[1][0] * halves[1][2]) / n, rtol=1e-5,
                               atol=0)
    for i, part in enumerate((slice(0, 2), slice(2, 4))):
        torch.testing.assert_close(got[1][part], halves[i][1] * halves[i][2] / n, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("path", ["rows", "taps"])
def test_gradients_under_bf16_autocast_are_the_fp32_gradients_rounded(path):
    """bf16 maps under autocast: the loss is computed in fp32 on the (exact) fp32 values of p and z,
    so it equals the fp32 loss and p's bf16 gradient is the fp32 gradient rounded to bf16."""
    h, w = 48, 80
    aff_a, aff_b, flow, valid = _geometry(h, w)
    p32, z32 = _maps(2, h, w)
    p16 = p32.detach().bfloat16().requires_grad_()
    z16 = z32.bfloat16()
    ref = p16.detach().float().requires_grad_()
    want = _loss_grad(ref, z16.float(), aff_a, aff_b, flow, valid, (h, w), "image", chunk_rows=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _loss_grad(p16, z16, aff_a, aff_b, flow, valid, (h, w), "image", chunk_rows=8, band_path=path)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=0)
    scale = want[1].abs().max().item()
    torch.testing.assert_close(got[1].float(), want[1].bfloat16().float(), rtol=8e-3, atol=1e-4 * scale)
    assert (got[1].float() == want[1].bfloat16().float()).float().mean() > 0.95  # almost all exactly


def test_model_gradients_under_bf16_autocast_match_the_straightforward_loss():
    """End to end under bf16 autocast: FlowE's banded image loss and the straightforward one give
    the same parameter gradients (up to bf16 rounding in the network's backward)."""
    batch = _batch(48, 96)
    grads = {}
    for rows in (0, 8):
        torch.manual_seed(0)
        model = FlowE({"arch": "resnet14", "output_stride": 8}, loss_resolution="image", symmetric=True,
                      projector={"hidden_channels": 32, "out_channels": 16}, predictor={"hidden_channels": 32},
                      loss_chunk_rows=rows)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
        assert out["loss"].dtype == torch.float32
        out["loss"].backward()
        grads[rows] = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[0].keys() == grads[8].keys() and len(grads[0]) > 10
    scale = max(g.abs().max().item() for g in grads[0].values())
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[8][name], g, rtol=3e-2, atol=2e-2 * scale, msg=name)


def test_no_gradient_is_computed_in_the_forward_when_grad_is_disabled(monkeypatch):
    """Under no_grad (an evaluation), or for a p without requires_grad, the banded forward does not
    run the upsampling's adjoint (torch.autograd.grad) — it did, since ``ctx.needs_input_grad``
    ignores the caller's no_grad. With grad on it runs once per band."""
    h, w = 40, 64
    aff_a, aff_b, flow, valid = _geometry(h, w)
    p, z = _maps(2, h, w)
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = (z, aff_a, aff_b, flow, valid, (h, w), "image")
    with torch.no_grad():
        off, _ = equivariance_loss(p, *args, chunk_rows=8)
    assert not calls and not off.requires_grad
    equivariance_loss(p.detach(), *args, chunk_rows=8)
    assert not calls
    on, _ = equivariance_loss(p, *args, chunk_rows=8)
    assert len(calls) == 5 and on.requires_grad  # 40 rows / 8
    torch.testing.assert_close(off, on.detach())


def test_float64_inputs_are_computed_in_float64():
    """fp64 maps and geometry: the banded loss runs in fp64 (like the straightforward one), equals it to
    fp64 precision, and its analytic eq.-5 gradient passes gradcheck on both paths."""
    h, w = 40, 64
    aff_a, aff_b, flow, valid = _geometry(h, w, dtype=torch.float64)
    p, z = _maps(2, h, w, dtype=torch.float64)
    args = (z, aff_a, aff_b, flow, valid, (h, w), "image")
    want = _loss_grad(p, *args, chunk_rows=0)
    for path in ("rows", "taps"):
        got = _loss_grad(p, *args, chunk_rows=8, band_path=path)
        assert got[0].dtype == got[1].dtype == torch.float64
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
    # mixed: fp64 maps, fp32 geometry (and the reverse) run in fp64 too
    got = _loss_grad(p, z, aff_a.float(), aff_b.float(), flow.float(), valid, (h, w), "image", chunk_rows=8)
    assert got[0].dtype == torch.float64
    q = p.detach().float().requires_grad_()
    assert _loss_grad(q, z, *args[1:], chunk_rows=8)[1].dtype == torch.float32  # p's own dtype
    t, ok = view_flow(aff_a, aff_b, flow, valid, (h, w))
    small_p, small_z = _maps(1, 24, 32, c=3, dtype=torch.float64)
    t_small, ok_small = t[:1, :, :24, :32] * 0.5, ok[:1, :24, :32]
    for path in ("rows", "taps"):
        assert torch.autograd.gradcheck(
            lambda x, path=path: image_resolution_loss(x, small_z, t_small, ok_small, (24, 32), 5, path)[0],
            (small_p,), eps=1e-6, atol=1e-7)


def test_band_options_are_checked():
    p, z = _maps(1, 16, 16)
    t, ok = torch.zeros(1, 2, 16, 16), torch.ones(1, 16, 16, dtype=torch.bool)
    with pytest.raises(KeyError, match="band_path must be one of"):
        image_resolution_loss(p, z, t, ok, (16, 16), 8, "diagonal")
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        image_resolution_loss(p, z, t, ok, (16, 16), -4)
