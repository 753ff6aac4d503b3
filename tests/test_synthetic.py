import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pretrain.data.synthetic import CLASSES, MovingShapesVideo, write_cityscapes_layout


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


def test_is_deterministic_in_seed():
    a, b, c = MovingShapesVideo(7).render(3.0), MovingShapesVideo(7).render(3.0), MovingShapesVideo(8).render(3.0)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])


def test_ground_truth_flow_warps_next_frame_onto_current():
    for seed in range(4):
        video = MovingShapesVideo(seed, object_speed=3.0, camera_speed=2.0)
        f0, f1 = video.render(0), video.render(2)
        out = video.flow(0, 2)
        valid = out["valid"] & _away_from_edges(f1["surface"], out["flow"])
        assert valid.float().mean() > 0.5
        warped = _backward_warp(f1["image"], out["flow"])
        err = (warped - f0["image"]).abs().mean(0)[valid].mean()
        no_warp = (f1["image"] - f0["image"]).abs().mean(0)[valid].mean()
        assert err < 4e-3, err
        assert err < no_warp / 8
        # the surface ids carried by the flow agree exactly on valid pixels
        pts = torch.stack([out["flow"][0] + torch.arange(video.width), out["flow"][1] +
                           torch.arange(video.height)[:, None]], -1).reshape(-1, 2).double()
        assert torch.equal(video.surface_at(pts, 2).reshape(video.height, video.width)[out["valid"]],
                           f0["surface"][out["valid"]])


def test_forward_and_backward_flow_are_inverse_on_valid_pixels():
    video = MovingShapesVideo(3, object_speed=2.0)
    fw, bw = video.flow(0, 1), video.flow(1, 0)
    back_at_target = _backward_warp(bw["flow"], fw["flow"])
    interior = fw["valid"] & _away_from_edges(video.render(1)["surface"], fw["flow"])
    residual = (fw["flow"] + back_at_target).norm(dim=0)[interior]
    assert residual.max() < 0.05


def _two_squares() -> MovingShapesVideo:
    """Square 0 (behind) moves 20 px right under a static square 1 (in front); static camera."""
    video = MovingShapesVideo(0, height=128, width=160, num_objects=2, camera_speed=0.0, zoom_rate=0.0)
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
    video = MovingShapesVideo(5, num_objects=8)
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


def test_cityscapes_layout_roundtrip(tmp_path):
    root = write_cityscapes_layout(tmp_path / "cs", seed=1, videos={"train": 2, "val": 1},
                                   frames_per_video=2, height=64, width=128)
    imgs = sorted((root / "leftImg8bit" / "train" / "synthetic").glob("*_leftImg8bit.png"))
    assert len(imgs) == 4 and len(list((root / "leftImg8bit" / "val").rglob("*.png"))) == 2
    stem = imgs[0].name.replace("_leftImg8bit.png", "")
    gt = root / "gtFine" / "train" / "synthetic"
    sem = cv2.imread(str(gt / f"{stem}_gtFine_labelTrainIds.png"), cv2.IMREAD_UNCHANGED)
    inst = cv2.imread(str(gt / f"{stem}_gtFine_instanceIds.png"), cv2.IMREAD_UNCHANGED)
    assert sem.dtype == np.uint8 and inst.dtype == np.uint16 and sem.shape == (64, 128)
    np.testing.assert_array_equal(np.where(inst >= 1000, inst // 1000, inst), sem)
    assert not list(tmp_path.glob(".cs.*")), "temp folder left behind"
