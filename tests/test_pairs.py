"""Frame-pair datasets, bad-file handling, and the flow cache / show commands."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from flowssl.cli import main
from pretrain.api import load_config
from pretrain.data.frames import BadDataError
from pretrain.data.pairs import CityscapesSequencePairs, FrameFolderPairs, SyntheticPairs, VideoPairs
from pretrain.data.synthetic import MovingShapesVideo
from pretrain.flow import warp
from pretrain.geometry import view_flow
from pretrain.registry import DATASETS, build_from

from .conftest import REPO

SMALL = {"crop_size": (48, 96), "scale_range": (0.9, 1.1), "colour": False}


def _write_frames(folder, n=6, seed=0, size=(64, 128)):
    folder.mkdir(parents=True, exist_ok=True)
    video = MovingShapesVideo(seed, *size, object_speed=1.0)
    for t in range(n):
        img = (video.render(t)["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"frame_{t:04d}.png"), img[:, :, ::-1])
    return video


@pytest.mark.parametrize("affine", [None, {"scale": (0.9, 1.1), "rotation": 10.0, "hflip": 1.0}],
                         ids=["flowe", "poodle-mirrored"])
def test_synthetic_pair_views_are_related_by_the_composed_flow(affine):
    # the first world's smooth textures: this measures the composition, not resampling of sharp textures
    ds = SyntheticPairs(seed=1, num_videos=2, height=64, width=128, colour=False, flow={"type": "ground_truth"},
                        world="coloured", affine=affine)
    for i in range(3):
        s = ds[i]
        if affine:  # mirrored: the linear part has a negative determinant
            assert torch.linalg.det(s["affine1"][:, :2]) < 0
        t, valid = view_flow(s["affine1"][None], s["affine2"][None], s["flow_fw"][None], s["valid_fw"][None],
                             (64, 128))
        aligned, inside = warp(s["view2"][None], t)
        mask = valid & inside
        err = (aligned - s["view1"][None]).abs().mean(1)[mask]
        assert mask.float().mean() > 0.1 and err.quantile(0.9) < 0.1  # normalised units (÷ std ≈ 0.22)
        assert torch.equal(ds[i]["view1"], s["view1"])  # a pure function of (seed, index)


def test_frame_folder_pairs_with_dis_and_a_corrupt_frame(tmp_path, caplog):
    _write_frames(tmp_path / "seqA")
    _write_frames(tmp_path / "seqB", seed=1)
    (tmp_path / "seqB" / "frame_0002.png").write_bytes(b"not a png")
    ds = FrameFolderPairs(str(tmp_path), interval=2, flow={"type": "dis"}, max_bad_fraction=0.5, **SMALL)
    assert len(ds.pairs) == 8 and all(a.parent == b.parent for a, b in ds.pairs)
    samples = [ds[i] for i in range(30)]
    assert all(s["view1"].shape == (3, 48, 96) and s["flow_fw"].shape == (2, 48, 96) for s in samples)
    assert ds.bad.bad > 0 and "frame_0002.png: unreadable file" in caplog.text


def test_too_many_bad_frames_stop_the_run(tmp_path):
    _write_frames(tmp_path / "seq", n=4)
    for f in list((tmp_path / "seq").glob("*.png"))[:3]:
        f.write_bytes(b"garbage")
    ds = FrameFolderPairs(str(tmp_path), interval=1, flow={"type": "dis"}, max_bad_fraction=0.1, **SMALL)
    with pytest.raises(BadDataError, match="unreadable"):
        for i in range(50):
            ds[i]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; set data.root"):
        FrameFolderPairs(str(tmp_path / "nope"), flow={"type": "dis"})


def test_cityscapes_sequence_pairs_stay_inside_snippets(tmp_path):
    base = tmp_path / "leftImg8bit_sequence" / "train" / "aachen"
    base.mkdir(parents=True)
    img = np.zeros((64, 128, 3), np.uint8)
    for seq, frames in (("000000", range(0, 5)), ("000000", range(20, 25)), ("000001", range(0, 5))):
        for f in frames:
            cv2.imwrite(str(base / f"aachen_{seq}_{f:06d}_leftImg8bit.png"), img)
    ds = CityscapesSequencePairs(str(tmp_path), interval=2, flow={"type": "identity"}, **SMALL)
    assert len(ds.pairs) == 3 * 3
    for a, b in ds.pairs:
        fa, fb = int(a.name.split("_")[2]), int(b.name.split("_")[2])
        assert fb - fa == 2 and a.name.split("_")[1] == b.name.split("_")[1]
    assert ds[0]["view1"].shape == (3, 48, 96)


def test_video_pairs_decode_frames_interval_apart(tmp_path):
    video = MovingShapesVideo(3, 64, 128)
    path = tmp_path / "videos" / "clip.mp4"
    path.parent.mkdir()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 64))
    if not writer.isOpened():
        pytest.skip("OpenCV has no mp4v encoder here")
    for t in range(20):
        writer.write((video.render(t)["image"].permute(1, 2, 0).numpy()[:, :, ::-1] * 255).astype(np.uint8))
    writer.release()
    (tmp_path / "videos" / "broken.mov").write_bytes(b"\x00" * 100)
    ds = VideoPairs(str(tmp_path / "videos"), interval_s=0.5, resize_to=None, flow={"type": "dis"},
                    max_bad_fraction=0.9, **SMALL)
    s = [ds[i] for i in range(8)]
    assert all(x["view1"].shape == (3, 48, 96) for x in s)
    assert ds.bad.bad > 0  # the broken file was met, skipped and counted
    from pretrain.data.pairs import read_video_pair

    a, b = read_video_pair(path, np.random.default_rng(0), 0.5)
    i0 = int(np.argmin([(video.render(t)["image"] - a).abs().mean() for t in range(20)]))
    i1 = int(np.argmin([(video.render(t)["image"] - b).abs().mean() for t in range(20)]))
    assert i1 - i0 == 5  # 0.5 s at 10 fps
    gaps = set()
    for seed in range(6):  # PooDLe's drawn gap: 0.5–1 s = 5–10 frames at 10 fps
        a, b = read_video_pair(path, np.random.default_rng(seed), (0.5, 1.0))
        i0 = int(np.argmin([(video.render(t)["image"] - a).abs().mean() for t in range(20)]))
        i1 = int(np.argmin([(video.render(t)["image"] - b).abs().mean() for t in range(20)]))
        gaps.add(i1 - i0)
    assert gaps <= set(range(5, 11)) and len(gaps) > 1


def test_flow_precompute_is_resumable_and_feeds_the_precomputed_source(tmp_path, capsys):
    _write_frames(tmp_path / "frames" / "seq", n=4)
    cfg = REPO / "configs" / "pretrain" / "flowe_r50_frames.py"
    opts = ["data.root=" + str(tmp_path / "frames"), "data.interval=1"]
    assert main(["flow", "precompute", str(cfg), "--out", str(tmp_path / "cache"), "--cfg-options", *opts]) == 0
    assert "3 computed, 0 already there" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").rglob("*_fw.png"))) == 3
    assert main(["flow", "precompute", str(cfg), "--out", str(tmp_path / "cache"), "--cfg-options", *opts]) == 0
    assert "0 computed, 3 already there" in capsys.readouterr().out
    data = dict(load_config(cfg, {"data.root": str(tmp_path / "frames"), "data.interval": 1}).data)
    data.update(flow={"type": "precomputed", "root": str(tmp_path / "cache")}, **SMALL)
    ds = build_from(DATASETS, data, "dataset", seed=0)
    s = ds[0]
    assert s["flow_fw"].shape == (2, 48, 96) and "frame1" not in s


def test_flow_cache_stores_the_consistency_masks_training_reads(tmp_path, monkeypatch):
    """The cache holds each direction's forward–backward mask (α recorded), so the precomputed source
    reads it instead of re-running the check; with other α it recomputes; both agree with the check."""
    from flowssl.flow_tools import precompute_cache
    from pretrain.flow import sources
    from pretrain.flow.sources import FlowPair, PrecomputedFlow

    video = _write_frames(tmp_path / "frames" / "seq", n=3)
    paths = sorted((tmp_path / "frames" / "seq").glob("*.png"))[::2]
    dis = sources.build_flow_source({"type": "dis"})
    precompute_cache([(paths[0], paths[1])], ["seq/a__b"], tmp_path / "cache", dis)
    meta = json.loads((tmp_path / "cache" / "flow_cache.json").read_text())
    assert meta["valid"] == {"kind": "forward-backward consistency", "alpha1": 0.01, "alpha2": 0.5}
    img = video.render(0)["image"][None]
    cached = PrecomputedFlow(str(tmp_path / "cache"))
    assert cached.stored_valid

    def no_check(*args, **kwargs):
        raise AssertionError("the consistency check ran although the cache holds the masks")

    with monkeypatch.context() as m:
        m.setattr(FlowPair, "from_consistency", no_check)
        read = cached(img, img, {"keys": ["seq/a__b"]})
    recomputed = FlowPair.from_consistency(read.fw, read.bw, 0.01, 0.5)
    assert (~read.valid_fw).float().mean() > 0.001  # the masks are not all-valid
    for stored, checked in ((read.valid_fw, recomputed.valid_fw), (read.valid_bw, recomputed.valid_bw)):
        assert (stored == checked).float().mean() > 0.995  # equal up to the 1/64-px quantisation
    other = PrecomputedFlow(str(tmp_path / "cache"), alpha1=0.05)
    assert not other.stored_valid
    torch.testing.assert_close(other(img, img, {"keys": ["seq/a__b"]}).valid_fw.float(),
                               FlowPair.from_consistency(read.fw, read.bw, 0.05, 0.5).valid_fw.float())


def test_flow_show_writes_pictures(tmp_path, capsys):
    _write_frames(tmp_path / "f", n=3)
    assert main(["flow", "show", str(tmp_path / "f" / "frame_0000.png"), str(tmp_path / "f" / "frame_0002.png"),
                 "--out", str(tmp_path / "show")]) == 0
    stats = json.loads((tmp_path / "show" / "stats.json").read_text())
    assert stats["mean_abs_error_warped"] < stats["mean_abs_error_unwarped"]
    for name in ("flow_fw.png", "occlusion.png", "error_warped.png"):
        assert cv2.imread(str(tmp_path / "show" / name)).shape == (64, 128, 3)
    assert main(["flow", "show", str(tmp_path / "nope.png"), str(tmp_path / "f" / "frame_0000.png"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "nope.png does not exist" in capsys.readouterr().err


# -- clip cache: clips rendered once, samples unchanged ----------------------------------------------------

CLIPS = {"seed": 3, "num_videos": 2, "num_frames": 3, "frame_gap": 2, "height": 32, "width": 64}


@pytest.fixture()
def one_thread():
    """The rendering path as a DataLoader worker runs it (one thread): fast on a busy CPU."""
    from pretrain.data.clip_cache import one_thread

    with one_thread():
        yield


def _clip_datasets(tmp_path, **kwargs):
    live = SyntheticPairs(**CLIPS, **kwargs)
    return live, SyntheticPairs(**CLIPS, **kwargs, clip_cache=str(tmp_path / "clips"))


@pytest.mark.parametrize("kwargs", [
    {"crop_size": (16, 32), "flow": {"type": "ground_truth"}, "return_frames": True},  # FlowE: crops + exact flow
    {"crop_size": (32, 64), "scale_range": (1.5, 2.0), "flow": {"type": "ground_truth"}},  # whole frames, rescaled
    {"crop_size": (32, 64), "flow": None, "mode": "byol", "window": 0.5, "view_size": (16, 32)},  # BYOL (crop w/ video)
], ids=["flowe-crops", "scaled", "byol-crop"])
def test_clip_cache_serves_the_samples_the_renderer_makes(tmp_path, kwargs, monkeypatch, one_thread):
    live, cached = _clip_datasets(tmp_path, **kwargs)
    folder = next((tmp_path / "clips").iterdir())
    video = folder / f"video-{cached.video_seed(0)}"
    flows = 2 * 3 * 2 if kwargs["flow"] else 0  # flow + valid, both directions, 3 pairs
    frames = 2 * (3 + 2)  # 5 frames and their labels
    assert len(list(video.glob("*.npy"))) == frames + flows and np.load(video / "frame-00000.npy").dtype == np.uint8
    want = [live[i] for i in range(6)]
    # once the dataset is built nothing renders: samples come from the files
    monkeypatch.setattr(MovingShapesVideo, "render", lambda *a, **k: pytest.fail("rendered a frame"))
    monkeypatch.setattr(MovingShapesVideo, "flow", lambda *a, **k: pytest.fail("rendered a flow"))
    for i, w in enumerate(want):
        got = cached[i]
        assert w.keys() == got.keys()
        for k in w:
            assert torch.equal(w[k], got[k]), (i, k)


def test_clip_cache_frames_are_shared_and_byol_frames_match(tmp_path, one_thread):
    from pretrain.data.datasets import SyntheticFrames

    _clip_datasets(tmp_path, crop_size=(16, 32), flow={"type": "ground_truth"})
    folder = next((tmp_path / "clips").iterdir())
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.npy")}
    opts = {k: CLIPS[k] for k in ("seed", "num_videos", "num_frames", "height", "width")}
    live = SyntheticFrames(**opts, crop_size=(16, 32))
    cached = SyntheticFrames(**opts, crop_size=(16, 32), clip_cache=str(tmp_path / "clips"))
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.npy")} == before  # its frames were there: none rendered
    for i in range(4):
        want, got = live[i], cached[i]
        assert all(torch.equal(want[k], got[k]) for k in want)
    # the oracle's labelled views: the cache holds each frame's labels too
    live, cached = (SyntheticFrames(**opts, crop_size=(16, 32), labels=True, **extra)
                    for extra in ({}, {"clip_cache": str(tmp_path / "clips")}))
    for i in range(4):
        want, got = live[i], cached[i]
        assert set(want) == set(got) == {"image", "label"} and all(torch.equal(want[k], got[k]) for k in want)
    # the same samples with or without: a resume may add, move or drop the cache
    from pretrain.trainer import changed_settings

    assert changed_settings({"data.num_videos": 2}, {"data.num_videos": 2, "data.clip_cache": "clips"}) == []
    # 8-bit frames: what a video file (and the readout's PNGs) hold
    frame = SyntheticPairs(**CLIPS, crop_size=(32, 64), colour=False, return_frames=True,
                           flow={"type": "ground_truth"})[0]["frame1"]
    assert torch.equal((frame * 255).round() / 255, frame)


def test_clip_cache_refuses_a_mismatched_or_stale_cache(tmp_path, one_thread):
    _clip_datasets(tmp_path, crop_size=(16, 32), flow={"type": "ground_truth"})
    folder = next((tmp_path / "clips").iterdir())
    header = json.loads((folder / "clip_cache.json").read_text())
    (folder / "clip_cache.json").write_text(json.dumps({**header, "width": 65}))
    with pytest.raises(ValueError, match=r"clip cache .* holds .*'width': 65.*delete the folder"):
        SyntheticPairs(**CLIPS, clip_cache=str(tmp_path / "clips"))
    (folder / "clip_cache.json").write_text(json.dumps(header))
    # clips that are not what the world renders now (its code changed): refused, never served
    video = next(folder.glob("video-*"))
    frame = np.load(video / "frame-00000.npy")
    frame[:, CLIPS["height"] // 2] ^= 1
    np.save(video / "frame-00000.npy", frame)
    with pytest.raises(ValueError, match=r"differs from what world 'crowded' renders now.*delete the folder"):
        SyntheticPairs(**CLIPS, clip_cache=str(tmp_path / "clips"))
    (video / "frame-00000.npy").write_bytes(b"not npy")
    with pytest.raises(ValueError, match=r"frame-00000.npy cannot be read"):
        SyntheticPairs(**CLIPS, clip_cache=str(tmp_path / "clips"))
