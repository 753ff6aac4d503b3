"""PooDLe: the spatial decoder's grid, flow-paired subcrops, the pooled BYOL loss, a short run, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.api import Trainer, load_config
from pretrain.data.synthetic import MovingShapesVideo
from pretrain.flow.warp import warp
from pretrain.geometry import view_flow
from pretrain.losses import byol_loss
from pretrain.models.decoder import SpatialDecoder
from pretrain.objectives import BYOL
from pretrain.objectives.poodle import PooDLe, crop_boxes, flow_subcrops

from .conftest import REPO

POODLE_DEMO = REPO / "configs" / "pretrain" / "poodle_r14_synthetic_demo.py"
EYE = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
SMALL = {"projector": {"hidden_channels": 32, "out_channels": 16}, "predictor": {"hidden_channels": 32},
         "pooled_projector": {"hidden_channels": 32, "out_channels": 16}, "pooled_predictor": {"hidden_channels": 32},
         "decoder": {"channels": 64}}


def _ramp(stride: int, h: int, w: int, channels: int) -> torch.Tensor:
    """f(x, y) = x + 2y + 100 at the centres s·k + (s − 1)/2 of a stride-s grid, in every channel."""
    ys = torch.arange(-(-h // stride)) * stride + (stride - 1) / 2
    xs = torch.arange(-(-w // stride)) * stride + (stride - 1) / 2
    return (xs[None, :] + 2 * ys[:, None] + 100).expand(1, channels, -1, -1).clone()


def test_decoder_output_cells_are_the_cells_the_loss_warps():
    """With identity blocks and laterals the decoder sums its three inputs: for a linear ramp sampled
    at each stage's cell centres it must give 3× the ramp at the stride-8 centres s·k + (s − 1)/2 —
    the grid ``view_flow(stride=8)`` composes T on — and warping it by that T moves it by the flow."""
    h, w, c = 96, 128, 8
    dec = SpatialDecoder({"layer2": c, "layer3": c, "layer4": c}, channels=c)
    with torch.no_grad():
        for block in dec.blocks:  # Bottleneck → relu(0 + x): identity on positive maps
            block.bn3.weight.zero_()
            block.bn3.bias.zero_()
        for lateral in dec.laterals:
            lateral.weight.copy_(torch.eye(c)[:, :, None, None])
            lateral.bias.zero_()
    dec.eval()
    feats = {"layer2": _ramp(8, h, w, c), "layer3": _ramp(16, h, w, c), "layer4": _ramp(32, h, w, c)}
    with torch.no_grad():
        out = dec(feats)
    assert out.shape[-2:] == (h // 8, w // 8)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))  # borders: bilinear clamps, twice
    torch.testing.assert_close(out[inner], 3 * _ramp(8, h, w, c)[inner])

    shift = torch.tensor([16.0, 8.0])  # frame flow in pixels → T = (2, 1) cells on the stride-8 grid
    flow = shift[None, :, None, None].expand(1, 2, h, w)
    t, valid = view_flow(EYE[None], EYE[None], flow, torch.ones(1, h, w, dtype=torch.bool), (h, w), stride=8)
    warped, inside = warp(out, t)
    want = 3 * (_ramp(8, h, w, c) + shift[0] + 2 * shift[1])
    keep = (valid & inside)[:, None].expand_as(warped).clone()
    keep[..., :3, :] = keep[..., -5:, :] = keep[..., :, :3] = keep[..., :, -5:] = False
    assert keep.sum() > 0
    torch.testing.assert_close(warped[keep], want[keep])


@pytest.mark.parametrize("size", [(64, 128), (72, 104)])
def test_decoder_map_matches_the_feature_loss_grid(size):
    """On sizes that are not multiples of 32 too, the dense map has view_flow(stride=8)'s grid."""
    model = PooDLe({"arch": "resnet14", "output_stride": 32}, **SMALL)
    x = torch.randn(2, 3, *size)
    dense = model.dense_map(x)
    t, _ = view_flow(EYE.expand(2, 2, 3), EYE.expand(2, 2, 3), torch.zeros(2, 2, *size),
                     torch.ones(2, *size, dtype=torch.bool), size, stride=8)
    assert dense.shape[-2:] == t.shape[-2:] == (-(-size[0] // 8), -(-size[1] // 8))


def _affine(scale: float, tx: float, ty: float) -> torch.Tensor:
    return torch.tensor([[scale, 0.0, tx], [0.0, scale, ty]])


def test_subcrop_partners_follow_an_analytic_motion():
    """Frame motion d, view a = frame shifted, view b = frame zoomed: the partner of centre c must be
    A_b(A_a⁻¹c + d) exactly (no jitter), every pair found, boxes centred there, box b no smaller."""
    h, w, b = 60, 100, 3
    a_a, a_b = _affine(1.0, -4.0, 3.0).expand(b, 2, 3), _affine(1.25, -12.0, -7.0).expand(b, 2, 3)
    d = torch.tensor([3.0, -2.0])
    flow = d[None, :, None, None].expand(b, 2, 120, 200).clone()
    t, valid = view_flow(a_a, a_b, flow, torch.ones(b, 120, 200, dtype=torch.bool), (h, w))
    torch.manual_seed(0)
    crops = flow_subcrops(t, valid, num=6, jitter=0.0)
    c = crops["centre_a"]
    want = 1.25 * (c - torch.tensor([-4.0, 3.0]) + d) + torch.tensor([-12.0, -7.0])
    inside = ((want >= 0) & (want <= torch.tensor([w - 1.0, h - 1.0]))).all(-1)
    assert inside.float().mean() > 0.5  # the test sees real pairs
    torch.testing.assert_close(crops["centre_b"][inside], want[inside], rtol=0, atol=1e-4)
    assert crops["paired"][inside].all()
    ctr = lambda box: (box[..., :2] + box[..., 2:]) / 2 - 0.5  # noqa: E731
    torch.testing.assert_close(ctr(crops["boxes_a"]), c)
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    frac = area(crops["boxes_a"]) / (h * w)
    assert ((frac > 0.05 - 1e-4) & (frac < 0.3 + 1e-4)).all()
    # cells are distinct: K centres per image never share a cell
    cell = round(np.sqrt(0.175) * min(h, w))
    ids = (c[..., 1] // cell) * -(-w // cell) + c[..., 0] // cell
    assert all(len(set(row.tolist())) == 6 for row in ids)


def test_subcrop_pairs_show_the_same_point_of_the_synthetic_video():
    """The world's exact flow: the partner centre in frame 2 shows what the centre shows in frame 1."""
    video = MovingShapesVideo(3, 128, 256, object_speed=2.0)
    f1, f2 = video.render(0)["image"], video.render(4)["image"]
    fl = video.flow(0, 4)
    t, valid = view_flow(EYE[None], EYE[None], fl["flow"][None], fl["valid"][None], (128, 256))
    torch.manual_seed(1)
    crops = flow_subcrops(t, valid, num=12, jitter=0.0, max_tries=1)
    paired = crops["paired"][0]
    assert paired.sum() >= 6
    ca, cb = crops["centre_a"][0][paired], crops["centre_b"][0][paired]
    grid = lambda pts: torch.stack([(2 * pts[:, 0] + 1) / 256 - 1, (2 * pts[:, 1] + 1) / 128 - 1], -1)  # noqa: E731
    at_a = F.grid_sample(f1[None], grid(ca)[None, None], align_corners=False)[0, :, 0]
    at_b = F.grid_sample(f2[None], grid(cb)[None, None], align_corners=False)[0, :, 0]
    close = ((at_a - at_b).abs().max(0).values < 0.05).float().mean()
    assert close >= 0.9, (at_a - at_b).abs().max(0).values  # bilinear reads may straddle an edge


def test_unpaired_subcrops_fall_back_to_the_same_view():
    """No valid flow anywhere: every pair is a second crop of view a (reference code's fallback)."""
    t = torch.zeros(2, 2, 40, 80)
    crops = flow_subcrops(t, torch.zeros(2, 40, 80, dtype=torch.bool), num=4)
    assert not crops["paired"].any()
    boxes_b = crops["boxes_b"]
    assert (boxes_b[..., :2] >= 0).all() and (boxes_b[..., 2] <= 80).all() and (boxes_b[..., 3] <= 40).all()


def _cells(h: int, w: int) -> tuple[int, int, int]:
    """The subcrop grid: cell side (about a mean crop's side), rows and columns holding view pixels."""
    cell = round(np.sqrt(0.175) * min(h, w))
    return cell, -(-h // cell), -(-w // cell)


@pytest.mark.parametrize("size", [(512, 1024), (100, 300), (60, 100)])
def test_subcrop_centres_are_uniform_in_the_in_image_part_of_each_cell(size):
    """Issue 21.1: a border cell reaching past the view is sampled over its in-image pixels, so no
    centre piles up on the last row/column (clamping put ~20 % of them on y = 511 at 512×1024).
    Cells away from the top/left border (where the online crop is moved in, 21.3) hold uniform
    centres; 100×300 is not a multiple of the cell, 60×100 has a width that is (4 cells of 25: no
    fifth, empty column, where the reference's randint fails)."""
    h, w = size
    cell, rows, cols = _cells(h, w)
    t, valid = torch.zeros(4, 2, h, w), torch.ones(4, h, w, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    centres = torch.cat([flow_subcrops(t, valid, num=6, jitter=0.0, generator=gen)["centre_a"].reshape(-1, 2)
                         for _ in range(150)])
    assert (centres >= 0).all() and (centres[:, 0] <= w - 1).all() and (centres[:, 1] <= h - 1).all()
    cx, cy = (centres[:, 0] // cell).long(), (centres[:, 1] // cell).long()
    assert cx.max() == cols - 1 and cy.max() == rows - 1  # the last row and column are drawn from
    for axis, idx, n_cells, length in ((1, cy, rows, h), (0, cx, cols, w)):
        last = idx == n_cells - 1
        in_image = length - (n_cells - 1) * cell  # pixels of the last cell inside the view
        at_border = (centres[last, axis] == length - 1).float().mean()
        assert at_border < 3 / in_image + 0.01, (axis, at_border.item(), in_image)
        # uniform over [origin, length): offsets / extent have mean 1/2 and variance 1/12
        frac = (centres[last, axis] - (n_cells - 1) * cell + 0.5) / in_image
        assert abs(frac.mean() - 0.5) < 0.03 and abs(frac.var() - 1 / 12) < 0.015, (axis, frac.mean(), frac.var())
    if np.sqrt(0.4 * h * w) / 2 < cell:  # the largest online crop's half-side: the clamp stays in cell 0
        full = (cx > 0) & (cy > 0) & (cx < cols - 1) & (cy < rows - 1)  # full cells hold uniform centres too
        assert full.sum() > 200
        frac = (centres[full] - torch.stack([cx, cy], 1)[full] * cell + 0.5) / cell
        assert (frac.mean(0) - 0.5).abs().max() < 0.03 and (frac.var(0) - 1 / 12).abs().max() < 0.015


def test_online_subcrop_starts_inside_the_view_and_the_flow_is_read_at_its_centre():
    """Issue 21.3: as the reference's max(i, h // 2), the online crop never starts above/left of the
    view (it may still reach past the bottom/right border); the partner is found from the moved centre."""
    h, w, b = 60, 100, 8
    d = torch.tensor([2.0, 1.0])
    t, valid = d[None, :, None, None].expand(b, 2, h, w).clone(), torch.ones(b, h, w, dtype=torch.bool)
    gen = torch.Generator().manual_seed(3)
    starts, ends = [], []
    for _ in range(40):
        crops = flow_subcrops(t, valid, num=6, jitter=0.0, generator=gen)
        boxes = crops["boxes_a"]
        starts.append(boxes[..., :2].reshape(-1, 2))
        ends.append(boxes[..., 2:].reshape(-1, 2))
        ok = crops["paired"]
        torch.testing.assert_close(crops["centre_b"][ok], crops["centre_a"][ok] + d)
    starts, ends = torch.cat(starts), torch.cat(ends)
    assert (starts >= 0).all()
    assert (starts < 0.5).any()  # the clamp is reached: crops start right at the border
    assert (ends > torch.tensor([w, h])).any()  # bottom/right: not clamped, as the reference


def test_unpaired_subcrop_is_a_concentric_crop_of_the_same_view():
    """Issue 21.2: when no try finds a partner the reference crops view a again at the same centre."""
    t = torch.zeros(3, 2, 40, 80)
    crops = flow_subcrops(t, torch.zeros(3, 40, 80, dtype=torch.bool), num=5,
                          generator=torch.Generator().manual_seed(0))
    assert not crops["paired"].any()
    torch.testing.assert_close(crops["centre_b"], crops["centre_a"])
    ctr = lambda box: (box[..., :2] + box[..., 2:]) / 2 - 0.5  # noqa: E731
    inner = ((crops["boxes_b"][..., :2] > 0) & (crops["boxes_b"][..., 2:] < torch.tensor([80.0, 40.0]))).all(-1)
    assert inner.any()
    torch.testing.assert_close(ctr(crops["boxes_b"])[inner], crops["centre_a"][inner])


def test_crop_boxes_reads_the_boxed_pixels():
    img = torch.arange(2 * 20 * 30, dtype=torch.float32).view(2, 1, 20, 30)
    boxes = torch.tensor([[5.0, 4.0, 9.0, 8.0], [10.0, 2.0, 14.0, 6.0]])
    out = crop_boxes(img, boxes, torch.tensor([0, 1]), (4, 4))
    torch.testing.assert_close(out[0, 0], img[0, 0, 4:8, 5:9])
    torch.testing.assert_close(out[1, 0], img[1, 0, 2:6, 10:14])


def _batch(b: int = 2, h: int = 64, w: int = 128) -> dict[str, torch.Tensor]:
    videos = [MovingShapesVideo(s, h, w, object_speed=2.0) for s in range(b)]
    fw = [v.flow(0, 3) for v in videos]
    bw = [v.flow(3, 0) for v in videos]
    return {"view1": torch.stack([v.render(0)["image"] for v in videos]),
            "view2": torch.stack([v.render(3)["image"] for v in videos]),
            "affine1": EYE.expand(b, 2, 3).clone(), "affine2": EYE.expand(b, 2, 3).clone(),
            "flow_fw": torch.stack([f["flow"] for f in fw]), "flow_bw": torch.stack([f["flow"] for f in bw]),
            "valid_fw": torch.stack([f["valid"] for f in fw]), "valid_bw": torch.stack([f["valid"] for f in bw])}


def test_pooled_loss_is_byol_on_the_subcrop_pairs():
    """The pooled objective is BYOL's loss between pooled online crops and target crops: the BYOL
    objective with the same weights, on the same crops, gives the same number (and eq. 1 by hand)."""
    torch.manual_seed(0)
    model = PooDLe({"arch": "resnet14", "output_stride": 32}, subcrops={"num": 2, "size": (32, 32)}, **SMALL)
    batch = _batch()
    va, vb = torch.cat([batch["view1"], batch["view2"]]), torch.cat([batch["view2"], batch["view1"]])
    aff = torch.cat([batch["affine1"], batch["affine2"]])
    flow, valid = torch.cat([batch["flow_fw"], batch["flow_bw"]]), torch.cat([batch["valid_fw"], batch["valid_bw"]])
    torch.manual_seed(5)
    got, paired = model.pooled_loss(va, vb, aff, aff, flow, valid)
    assert paired > 0.5

    torch.manual_seed(5)  # the same crops
    t, ok = view_flow(aff, aff, flow, valid, (64, 128))
    crops = flow_subcrops(t, ok, num=2)
    image = torch.arange(4).repeat_interleave(2)
    online = crop_boxes(va, crops["boxes_a"].flatten(0, 1), image, (32, 32))
    target = crop_boxes(torch.cat([va, vb]), crops["boxes_b"].flatten(0, 1),
                        image + 4 * crops["paired"].flatten().long(), (32, 32))
    byol = BYOL({"arch": "resnet14", "output_stride": 32}, symmetric=False, projector=SMALL["pooled_projector"],
                predictor=SMALL["pooled_predictor"])
    for dst, src in ((byol.encoder, model.encoder), (byol.projector, model.pooled_projector),
                     (byol.predictor, model.pooled_predictor), (byol.target_encoder, model.target_encoder),
                     (byol.target_projector, model.target_pooled_projector)):
        dst.load_state_dict(src.state_dict())
    want = byol({"view1": online, "view2": target})["loss"]
    torch.testing.assert_close(got, want)
    # eq. 1 on the pooled features by hand: mean of 2 − 2 cos
    p = byol._online(online).flatten(1)
    z = byol._target(target).flatten(1)
    by_hand = (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()
    torch.testing.assert_close(byol_loss(p, z), by_hand)
    torch.testing.assert_close(got, by_hand)


class _Fixed(torch.nn.Module):
    """An 'encoder' returning hand-made maps, one per crop."""

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.maps = maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == self.maps.shape[0]
        return self.maps


def test_pooled_loss_on_hand_made_features_is_byol_of_the_pooled_vectors():
    """Hand-made layer4 maps and identity heads: the loss is mean(2 − 2 cos) of the average-pooled
    vectors — (1, 0) vs (1, 1) → 2 − √2, (0, 2) vs (0, 1) → 0, (1, 0) vs (−1, 0) → 4."""
    model = PooDLe({"arch": "resnet14", "output_stride": 32}, subcrops={"num": 1, "size": (8, 8)}, **SMALL)
    online = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])[:, :, None, None].expand(3, 2, 2, 2).clone()
    online[:, :, 0, 0] += 1.0  # spatial variation that pooling averages: cell offsets cancel
    online[:, :, 1, 1] -= 1.0
    target = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])[:, :, None, None].expand(3, 2, 2, 2)
    model.encoder, model.target_encoder = _Fixed(online), _Fixed(target)
    model.pooled_projector = model.pooled_predictor = model.target_pooled_projector = torch.nn.Identity()
    views = torch.randn(3, 3, 32, 48)
    flow, valid = torch.zeros(3, 2, 32, 48), torch.ones(3, 32, 48, dtype=torch.bool)
    aff = EYE.expand(3, 2, 3)
    loss, _ = model.pooled_loss(views, views, aff, aff, flow, valid)
    torch.testing.assert_close(loss, torch.tensor((2 - 2 ** 0.5 + 0 + 4) / 3))


def test_gradients_reach_the_online_parts_only_and_geometry_stays_fp32_under_bf16():
    torch.manual_seed(0)
    model = PooDLe({"arch": "resnet14", "output_stride": 32}, subcrops={"num": 2, "size": (32, 32)}, **SMALL)
    seen = {}
    real = flow_subcrops.__wrapped__

    def spy(t, valid, *args, **kwargs):
        seen["t"] = t.dtype
        out = real(t, valid, *args, **kwargs)
        seen["boxes"] = out["boxes_a"].dtype
        return out

    import pretrain.objectives.poodle as poodle_mod
    orig = poodle_mod.flow_subcrops
    poodle_mod.flow_subcrops = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(_batch())
    finally:
        poodle_mod.flow_subcrops = orig
    assert seen == {"t": torch.float32, "boxes": torch.float32}
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith("target_"):
            assert p.grad is None, name
    for part in ("encoder", "decoder", "projector", "predictor", "pooled_projector", "pooled_predictor"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part



@pytest.mark.parametrize("chunk_rows", [0, 8])  # 0: the whole upsampled maps at once; 8: bands of 8 rows
def test_the_objectives_loss_and_its_settings_reach_poodle(chunk_rows):
    """PooDLe calls the loss FlowE calls, looked up on the model: wrapping ``model.equivariance_loss``
    (as the step benchmark does to time it) wraps PooDLe's, and ``loss_resolution``/``loss_chunk_rows``
    reach it; whole maps and bands give the same dense loss."""
    torch.manual_seed(0)
    model = PooDLe({"arch": "resnet14", "output_stride": 32}, subcrops={"num": 1, "size": (16, 16)},
                   loss_resolution="image", loss_chunk_rows=chunk_rows, **SMALL)
    calls = []
    real = model.equivariance_loss

    def spy(*args):
        calls.append(args[7:])
        return real(*args)

    model.equivariance_loss = spy
    batch = _batch()
    out = model(batch)
    assert calls == [("image", chunk_rows)]
    del model.equivariance_loss
    model.loss_chunk_rows = 8 - chunk_rows  # the other implementation, same weights and batch
    torch.testing.assert_close(model(batch)["dense_loss"], out["dense_loss"], rtol=1e-5, atol=0)


def test_heads_are_built_once_and_the_dense_projector_reads_the_decoder(monkeypatch):
    import pretrain.objectives.base as base_mod
    import pretrain.objectives.poodle as poodle_mod

    built = []

    class Counted(base_mod.MLPHead):
        def __init__(self, in_channels: int, *args: int, **kwargs: int) -> None:
            built.append(in_channels)
            super().__init__(in_channels, *args, **kwargs)

    monkeypatch.setattr(base_mod, "MLPHead", Counted)
    monkeypatch.setattr(poodle_mod, "MLPHead", Counted)
    model = PooDLe({"arch": "resnet14", "output_stride": 32}, **SMALL)
    assert model.encoder.out_channels == 2048 and model.decoder.out_channels == 64
    assert built == [64, 16, 2048, 16]  # dense projector, predictor, pooled projector, pooled predictor
    assert model.projector[0].in_channels == model.target_projector[0].in_channels == 64


def test_momentum_pairs_extend_the_bootstrap_pairs_and_cover_every_target():
    """PooDLe adds its decoder and pooled projector to the (encoder, projector) pairs through ``super()``;
    the pairs' targets are exactly the frozen parameters, and the EMA moves each of them."""
    torch.manual_seed(0)
    model = PooDLe({"arch": "resnet14", "output_stride": 32}, **SMALL)
    pairs = model.momentum_pairs
    assert [(o, t) for o, t in pairs] == [(model.encoder, model.target_encoder),
                                         (model.projector, model.target_projector),
                                         (model.decoder, model.target_decoder),
                                         (model.pooled_projector, model.target_pooled_projector)]
    targets = {id(p) for _, t in pairs for p in t.parameters()}
    assert targets == {id(p) for p in model.parameters() if not p.requires_grad}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    before = [[p.clone() for p in t.parameters()] for _, t in pairs]
    model.momentum_update(0.75)
    for (online, target), old in zip(pairs, before, strict=True):
        for o, t, was in zip(online.parameters(), target.parameters(), old, strict=True):
            torch.testing.assert_close(t, 0.75 * was + 0.25 * o)


@pytest.mark.parametrize("option", [{"symmetric": False}, {"dense": False}])
def test_poodle_refuses_flowe_variants_it_does_not_have(option):
    with pytest.raises(ValueError, match="no model.symmetric=False or model.dense=False variant"):
        PooDLe({"arch": "resnet14", "output_stride": 32}, **SMALL, **option)

def test_short_poodle_run_lowers_the_loss_and_exports_the_encoder_only(tmp_path):
    opts = {"max_iters": 30, "checkpoint_interval": 30, "batch_size": 4, "num_workers": 0, "device": "cpu",
            "quiet": True, "log_interval": 1, "model.projector.hidden_channels": 64,
            "model.predictor.hidden_channels": 64, "model.pooled_projector.hidden_channels": 64,
            "model.pooled_predictor.hidden_channels": 64, "model.decoder.channels": 256}
    Trainer(load_config(POODLE_DEMO, opts), tmp_path).train()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "dense_loss", "pooled_loss"):
        first, last = np.mean([r[key] for r in rows[:5]]), np.mean([r[key] for r in rows[-5:]])
        assert last < first, (key, first, last)
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < 0.8 * first, (first, last)
    assert np.mean([r["subcrops_paired"] for r in rows]) > 0.5

    from pretrain.convert import convert
    from pretrain.fileio import safe_torch_load

    ckpt = sorted(tmp_path.glob("**/*.pth"))[-1]
    convert(ckpt, "torchvision", tmp_path / "enc.pth")
    state = safe_torch_load(tmp_path / "enc.pth")
    assert not any("decoder" in k or "pooled" in k for k in state)
    assert "layer4.0.conv1.weight" in state and "fc.weight" not in state
