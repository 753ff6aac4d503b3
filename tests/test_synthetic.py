"""The synthetic world: exact flow, labels, the Cityscapes layout, and the statistics the module
docstring promises (class is shape not colour, crowded frames, small objects, occlusion, motion)."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.data.clip_cache import eight_bit
from pretrain.data.coloured_shapes import ColouredShapesVideo
from pretrain.data.pairs import SyntheticPairs
from pretrain.data.synthetic import (
    CLASSES,
    MovingShapesVideo,
    make_video,
    video_seed,
    write_cityscapes_layout,
)
from pretrain.data.world import _apply, _inside


def _backward_warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    grid = torch.stack([2 * (xs + flow[0]) / (w - 1) - 1, 2 * (ys + flow[1]) / (h - 1) - 1], -1)
    return F.grid_sample(img[None], grid[None], align_corners=True)[0]


def _away_from_edges(surface: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Pixels whose target lies in a 3×3-uniform surface patch (bilinear reads one surface)."""
    s = surface[None, None].float()
    edge = (F.max_pool2d(s, 3, 1, 1) != -F.max_pool2d(-s, 3, 1, 1)).float()[0]
    return _backward_warp(edge, flow)[0] == 0


def _targets(flow: torch.Tensor) -> torch.Tensor:
    """[H*W, 2] float64 points p + flow[p]."""
    _, h, w = flow.shape
    return torch.stack([flow[0].double() + torch.arange(w), flow[1].double() + torch.arange(h)[:, None]],
                       -1).reshape(-1, 2)


def test_is_deterministic_in_seed():
    a, b, c = MovingShapesVideo(7).render(3.0), MovingShapesVideo(7).render(3.0), MovingShapesVideo(8).render(3.0)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ground_truth_flow_is_exact(seed):
    """Every valid pixel lands on the same surface point at t2 (same surface, same coordinates on it,
    to float precision); warping frame t2 back with the flow reproduces frame t1 up to bilinear
    interpolation of the texture, away from edges."""
    video = MovingShapesVideo(seed, object_speed=2.0, camera_speed=2.0)
    t1, t2 = 14.0, 18.0
    out = video.flow(t1, t2)
    valid, h, w = out["valid"], video.height, video.width
    assert 0.5 < valid.float().mean() < 1 and out["occluded"].any()  # crowded: objects hide each other
    surf1, coords1 = video.surface_coordinates(_targets(torch.zeros(2, h, w)), t1)
    surf2, coords2 = video.surface_coordinates(_targets(out["flow"]), t2)
    v = valid.reshape(-1)
    assert torch.equal(surf1[v], surf2[v])
    assert (coords1[v] - coords2[v]).abs().max() < 1e-4
    f0, f1 = video.render(t1), video.render(t2)
    keep = valid & _away_from_edges(f1["region"], out["flow"])
    assert keep.float().mean() > 0.3
    warped = _backward_warp(f1["image"], out["flow"])
    err = (warped - f0["image"]).abs().mean(0)[keep].mean()
    no_warp = (f1["image"] - f0["image"]).abs().mean(0)[keep].mean()
    assert err < 0.005 and err < no_warp / 8, (err, no_warp)


def test_forward_and_backward_flow_are_inverse_on_valid_pixels():
    video = MovingShapesVideo(3, object_speed=2.0)
    fw, bw = video.flow(0, 1), video.flow(1, 0)
    back_at_target = _backward_warp(bw["flow"], fw["flow"])
    interior = fw["valid"] & _away_from_edges(video.render(1)["surface"], fw["flow"])
    residual = (fw["flow"] + back_at_target).norm(dim=0)[interior]
    assert residual.max() < 0.05


def test_flow_carries_ego_motion_and_object_motion():
    """The background moves (camera pan and forward zoom), parked objects move with the camera at their
    own depth (parallax), moving objects differ from both."""
    video = MovingShapesVideo(4)
    out, frame = video.flow(14, 18), video.render(14)
    flow, surf = out["flow"], frame["surface"]
    bg = flow[:, surf == 0]
    assert bg.norm(dim=0).mean() > 1.0 and bg.std(1).max() > 0.05  # non-zero and not a single translation
    ego_only = video._ego(18, 1.0) @ np.linalg.inv(video._ego(14, 1.0))  # background's own map
    pts = torch.stack(torch.meshgrid(torch.arange(video.width), torch.arange(video.height), indexing="xy"),
                      -1).reshape(-1, 2).double()
    as_background = (_apply(ego_only, pts) - pts).T.reshape(2, video.height, video.width).float()
    moved = [k for k in range(video.num_objects) if video.moving[k] and (surf == k + 1).sum() > 20]
    assert len(moved) >= 3
    for k in moved:
        m = surf == k + 1
        assert (flow[:, m] - as_background[:, m]).norm(dim=0).mean() > 0.3, k


def _two_squares() -> ColouredShapesVideo:
    """Square 0 (behind) moves 20 px right under a static square 1 (in front); static camera."""
    video = ColouredShapesVideo(0, height=128, width=160, num_objects=2, camera_speed=0.0, zoom_rate=0.0)
    video.classes[:] = 2
    video._centre[:] = [[60.0, 64.0], [85.0, 64.0]]
    video._vel[:] = [[20.0, 0.0], [0.0, 0.0]]
    video._radius[:], video._growth[:], video._spin[:], video._angle[:] = 10.0, 0.0, 0.0, 0.0
    video._aspect[:] = 1.0
    return video


def test_occlusion_is_exactly_what_the_front_square_covers():
    video = _two_squares()
    out = video.flow(0, 1)
    ys, xs = torch.meshgrid(torch.arange(128), torch.arange(160), indexing="ij")
    rows = (ys - 64).abs() < 8.5
    # square 0 spans x ∈ (51.5, 68.5); moved by 20 it lands under square 1 (76.5, 93.5) when x > 56.5
    hidden_object = rows & (xs > 56.5) & (xs < 68.5)
    # background just right of square 0 is covered by it at t=1: x + 0 ∈ (71.5, 76.5)
    covered_background = rows & (xs > 71.5) & (xs < 76.5)
    assert torch.equal(out["occluded"], hidden_object | covered_background)
    assert torch.equal(out["flow"][0][rows & (xs > 51.5) & (xs < 68.5)],
                       torch.full((int((rows & (xs > 51.5) & (xs < 68.5)).sum()),), 20.0))
    assert not out["valid"][out["occluded"]].any()


def test_labels_and_instance_ids_are_consistent():
    video = MovingShapesVideo(5)
    out = video.render(4)
    sem, inst, surf = out["semantic"], out["instance"], out["surface"]
    assert sem.max() < len(CLASSES)
    assert torch.equal(sem == 0, surf == 0)
    assert torch.equal(inst // 1000 * (surf > 0), sem * (surf > 0))  # class·1000 + k on objects
    for k in range(video.num_objects):
        m = surf == k + 1
        if m.any():
            assert torch.unique(inst[m]).tolist() == [int(video.classes[k]) * 1000 + k]
            assert torch.unique(sem[m]).tolist() == [int(video.classes[k])]


@pytest.mark.parametrize("world", ["crowded", "v3"])
def test_a_window_is_the_crop_of_the_whole_frame(world):
    video = make_video(6, world=world)
    window = (20, 50, 64, 128)
    crop = (..., slice(20, 84), slice(50, 178))
    full, part = video.render(9), video.render(9, window=window)
    for key in ("image", "semantic", "instance", "region"):
        assert torch.equal(part[key], full[key][crop]), key
    full, part = video.flow(9, 13), video.flow(9, 13, window=window)
    for key in ("flow", "valid", "occluded"):
        assert torch.equal(part[key], full[key][crop]), key


def test_pretraining_pairs_render_only_their_crop():
    """A 64×128 pair of 128×256 videos is a crop of a whole frame, and its flow the crop of that frame's."""
    ds = SyntheticPairs(seed=0, num_videos=2, num_frames=4, frame_gap=4, height=128, width=256, crop_size=(64, 128),
                        colour=False, flow={"type": "ground_truth"}, return_frames=True)
    s = ds[0]
    assert s["frame1"].shape == (3, 64, 128) and s["flow_fw"].shape == (2, 64, 128)
    crop = s["frame1"].permute(1, 2, 0).numpy()
    matches = []  # (squared difference, video, time, top-left corner) of the best place for the crop
    for v in range(2):
        for t in range(4):
            frame = eight_bit(ds.video(v).render(t)["image"]).permute(1, 2, 0).numpy()  # the 8-bit video
            score, _, corner, _ = cv2.minMaxLoc(cv2.matchTemplate(frame, crop, cv2.TM_SQDIFF))
            matches.append((score, v, t, corner))
    score, v, t, (x0, y0) = min(matches)
    assert score / crop.size < 1e-6  # mean squared difference (an identity resample leaves ~1e-8)
    whole = ds.video(v).flow(t, t + 4)
    torch.testing.assert_close(s["flow_fw"], whole["flow"][:, y0:y0 + 64, x0:x0 + 128])
    assert torch.equal(s["valid_fw"], whole["valid"][y0:y0 + 64, x0:x0 + 128])


def test_crowded_frames_with_small_objects_and_a_dominant_background():
    """The ranges the module docstring states: 8–30 visible objects a frame (12–22 on average),
    foreground 5–35 % of a frame (10–25 % on average), at least 30 % of the instances small (< 0.3 % of
    the frame), and objects partly hidden by nearer ones."""
    counts, fg, small, hidden = [], [], [], []
    for seed in range(6):
        video = MovingShapesVideo(seed)
        pts = _targets(torch.zeros(2, video.height, video.width))
        for t in (0.0, 16.0, 36.0):
            surf = video.render(t)["surface"].reshape(-1)
            ids, area = torch.unique(surf[surf > 0], return_counts=True)
            counts.append(len(ids))
            fg.append((surf > 0).float().mean().item())
            small += (area < 0.003 * len(surf)).tolist()
            for k in (ids - 1).tolist():  # visible area vs the whole shape's
                idx = video._candidates(k, t, pts)
                u = _apply(np.linalg.inv(video.pose(k, t)), pts[idx])
                whole = int(_inside(int(video.classes[k]), u[:, 0], u[:, 1]).sum())
                hidden.append(int((surf == k + 1).sum()) < whole)
    assert 8 <= min(counts) and max(counts) <= 30 and 12 <= np.mean(counts) <= 22, counts
    assert 0.05 <= min(fg) and max(fg) <= 0.35 and 0.10 <= np.mean(fg) <= 0.25, fg
    assert np.mean(small) >= 0.3, np.mean(small)
    assert np.mean(hidden) >= 0.2, np.mean(hidden)


def _colour_classifier(world: str, height: int = 128, width: int = 256, videos: int = 12
                       ) -> tuple[float, float, float]:
    """Fit per-pixel classifiers on colour alone (RGB and its quadratic terms: logistic regression by
    L-BFGS) on ``videos`` videos, score them on as many others: (balanced accuracy of the class-balanced
    fit, mIoU of the plain fit, mIoU of the prior — background everywhere)."""
    def pixels(seeds: range) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        xs, ys = [], []
        for s in seeds:
            out = make_video(s, height, width, world=world).render(0.0)
            keep = torch.randperm(out["semantic"].numel(), generator=g)[:6000]
            xs.append(out["image"].reshape(3, -1).T[keep].double())
            ys.append(out["semantic"].reshape(-1)[keep])
        x = torch.cat(xs)
        return torch.cat([x, (x[:, :, None] * x[:, None, :]).flatten(1)], 1), torch.cat(ys)

    x, y = pixels(range(100, 100 + videos))
    xt, yt = pixels(range(200, 200 + videos))
    mu, sd = x.mean(0), x.std(0)
    x, xt = (x - mu) / sd, (xt - mu) / sd
    n = len(CLASSES)

    def fit(weight: torch.Tensor | None) -> torch.Tensor:
        torch.manual_seed(0)
        lin = torch.nn.Linear(x.shape[1], n).double()
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=50, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(lin(x), y, weight=weight)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return lin(xt).argmax(1)

    def miou(pred: torch.Tensor) -> float:
        inter = torch.bincount(yt[pred == yt], minlength=n).double()
        union = torch.bincount(yt, minlength=n) + torch.bincount(pred, minlength=n) - inter
        return float((inter / union.clamp(min=1)).mean())

    weight = 1 / torch.bincount(y, minlength=n).double().clamp(min=1)
    pred = fit(weight / weight.sum())
    bacc = float(np.mean([(pred[yt == c] == c).float().mean().item() for c in range(n) if (yt == c).any()]))
    return bacc, miou(fit(None)), miou(torch.zeros_like(yt))


def test_colour_does_not_predict_class():
    """The design's promise: every object and background region draws its colour from one pool, so a
    colour classifier stays at chance (1/6 ≈ 0.17; bound 0.25) — while on the first world, where
    each class has its own colour, the same classifier reads the class off one pixel."""
    assert _colour_classifier("crowded")[0] < 0.25
    assert _colour_classifier("coloured")[0] > 0.9


def test_splits_never_share_a_video():
    seeds = {split: {video_seed(s, split, i) for i in range(64)} for split in ("train", "val") for s in (0,)}
    pretrain = {video_seed(s, "pretrain", i) for s in range(3) for i in range(64)}
    assert not seeds["train"] & seeds["val"] and not (seeds["train"] | seeds["val"]) & pretrain
    assert len(pretrain) == 3 * 64  # each pretraining seed has its own videos


def test_cityscapes_layout_roundtrip(tmp_path):
    root = write_cityscapes_layout(tmp_path / "cs", seed=1, videos={"train": 2, "val": 1},
                                   frames_per_video=2, height=64, width=128)
    imgs = sorted((root / "leftImg8bit" / "train" / "synthetic").glob("*_leftImg8bit.png"))
    val = sorted((root / "leftImg8bit" / "val").rglob("*.png"))
    assert len(imgs) == 4 and len(val) == 2
    stem = imgs[0].name.replace("_leftImg8bit.png", "")
    gt = root / "gtFine" / "train" / "synthetic"
    sem = cv2.imread(str(gt / f"{stem}_gtFine_labelTrainIds.png"), cv2.IMREAD_UNCHANGED)
    inst = cv2.imread(str(gt / f"{stem}_gtFine_instanceIds.png"), cv2.IMREAD_UNCHANGED)
    assert sem.dtype == np.uint8 and inst.dtype == np.uint16 and sem.shape == (64, 128)
    np.testing.assert_array_equal(np.where(inst >= 1000, inst // 1000, inst), sem)
    assert len(np.unique(inst[inst >= 1000])) >= 5  # many instances a frame
    train_pixels = {cv2.imread(str(p)).tobytes() for p in imgs}
    assert not any(cv2.imread(str(p)).tobytes() in train_pixels for p in val)  # held-out videos
    assert not list(tmp_path.glob(".cs.*")), "temp folder left behind"


def test_the_first_world_is_kept_under_its_own_name(tmp_path):
    root = write_cityscapes_layout(tmp_path / "old", videos={"train": 1}, frames_per_video=1, height=64,
                                   width=128, world="coloured")
    img = cv2.imread(str(next((root / "leftImg8bit").rglob("*.png"))))[:, :, ::-1]
    expected = ColouredShapesVideo(video_seed(0, "train", 0), 64, 128).render(0)["image"]
    np.testing.assert_array_equal(img, (expected.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    with pytest.raises(ValueError, match="unknown synthetic world"):
        make_video(0, world="nonesuch")


def test_readout_datasets_follow_the_world(tmp_path):
    """mmseg's and detectron2's synthetic datasets name the world's classes, and the d2 loader gives one
    instance per visible object with its class and box."""
    from d2_plugin.datasets import SYNTHETIC_THING_CLASSES, load_synthetic_instances

    assert SYNTHETIC_THING_CLASSES == CLASSES[1:]
    root = write_cityscapes_layout(tmp_path / "cs", seed=3, videos={"train": 1}, frames_per_video=1)
    inst = make_video(video_seed(3, "train", 0)).render(0)["instance"].numpy()
    (d,) = load_synthetic_instances(root, "train")
    expected = {}
    for iid in np.unique(inst[inst >= 1000]):
        ys, xs = np.nonzero(inst == iid)
        expected[int(iid)] = (int(iid) // 1000 - 1, [float(xs.min()), float(ys.min()), float(xs.max() + 1),
                                                     float(ys.max() + 1)])
    got = sorted((a["category_id"], a["bbox"]) for a in d["annotations"])
    assert len(got) >= 8 and got == sorted(expected.values())
    pytest.importorskip("mmseg")
    from mmseg_plugin.datasets import SyntheticCityscapesDataset

    assert tuple(SyntheticCityscapesDataset.METAINFO["classes"]) == CLASSES
