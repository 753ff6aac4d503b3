"""Warp convention, occlusion, flow file formats and flow sources."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pretrain.data.frames import read_rgb
from pretrain.data.synthetic import MovingShapesVideo
from pretrain.flow import (
    DISFlow,
    RAFTFlow,
    forward_backward_occlusion,
    read_flo,
    read_flow_png,
    read_kitti_flow,
    warp,
    write_flo,
    write_flow_png,
    write_kitti_flow,
)
from pretrain.flow.io import FlowFileError
from pretrain.flow.sources import FlowPair

from .test_synthetic import _two_squares


def _smooth_image(h: int = 48, w: int = 64) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([torch.sin(xs / 5), torch.cos(ys / 7), torch.sin((xs + ys) / 9)])[None]


def test_warp_reads_at_p_plus_flow():
    img = _smooth_image()
    flow = torch.zeros(1, 2, 48, 64)
    flow[:, 0], flow[:, 1] = 3.0, -2.0
    out, valid = warp(img, flow)
    # out[y, x] = img[y − 2, x + 3] exactly for integer shifts
    assert torch.allclose(out[..., 2:, :-3], img[..., :-2, 3:], atol=1e-6)
    assert not valid[0, :2].any() and not valid[0, :, -3:].any() and valid[0, 2:, :-3].all()
    assert out[..., :2, :].abs().max() < 1e-6  # zeros outside


def test_forward_backward_check_finds_the_occluder():
    video = _two_squares()
    fw, bw = video.flow(0, 1), video.flow(1, 0)
    occ = forward_backward_occlusion(fw["flow"][None], bw["flow"][None])[0]
    truth = fw["occluded"]
    inter, union = (occ & truth).sum(), (occ | truth).sum()
    assert inter / union > 0.8, (inter, union)
    assert not occ[:20].any()  # far from the squares, nothing is occluded


def test_flo_roundtrip_and_unknown_values(tmp_path):
    flow = torch.randn(2, 7, 9) * 10
    valid = torch.rand(7, 9) > 0.2
    write_flo(tmp_path / "a.flo", flow, valid)
    back, v = read_flo(tmp_path / "a.flo")
    assert torch.equal(v, valid)
    assert torch.equal(back[:, valid], flow[:, valid])  # float32: exact


def test_png_formats_roundtrip_to_their_precision(tmp_path):
    flow = torch.randn(2, 11, 13) * 40
    valid = torch.rand(11, 13) > 0.3
    write_kitti_flow(tmp_path / "k.png", flow, valid)
    back, v = read_kitti_flow(tmp_path / "k.png")
    assert torch.equal(v, valid) and (back - flow).abs().max() <= 0.5 / 64 + 1e-6
    flow = flow.clamp(-100, 100)
    write_flow_png(tmp_path / "c.png", flow, scale=256)
    back, v = read_flow_png(tmp_path / "c.png", scale=256)
    assert v.all() and (back - flow).abs().max() <= 0.5 / 256 + 1e-6
    with pytest.raises(FlowFileError, match="exceeds"):
        write_flow_png(tmp_path / "big.png", flow * 100, scale=256)


def test_bad_flow_files_have_clear_errors(tmp_path):
    with pytest.raises(FlowFileError, match="does not exist"):
        read_flo(tmp_path / "missing.flo")
    (tmp_path / "x.flo").write_bytes(b"JUNKJUNKJUNK")
    with pytest.raises(FlowFileError, match="not a Middlebury"):
        read_flo(tmp_path / "x.flo")
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(FlowFileError, match="cannot be decoded"):
        read_kitti_flow(tmp_path / "x.png")
    with pytest.raises(FlowFileError, match="NaN"):
        write_flo(tmp_path / "nan.flo", torch.full((2, 3, 3), float("nan")))
    assert not (tmp_path / "nan.flo").exists()


def test_reads_real_flyingchairs_and_kitti_samples(shared_data):
    flow, valid = read_flo(shared_data / "flyingchairs_sample" / "00001_flow.flo")
    img1 = read_rgb(shared_data / "flyingchairs_sample" / "00001_img1.ppm")
    img2 = read_rgb(shared_data / "flyingchairs_sample" / "00001_img2.ppm")
    assert flow.shape[1:] == img1.shape[1:] and valid.all() and flow.abs().max() > 1
    warped, inside = warp(img2[None], flow[None])
    err = (warped[0] - img1).abs().mean(0)[inside[0]].mean()
    assert err < 0.5 * (img2 - img1).abs().mean(0)[inside[0]].mean()  # the GT flow aligns the pair
    kflow, kvalid = read_kitti_flow(shared_data / "kitti_flow_sample" / "flow_gt.png")
    raw = cv2.imread(str(shared_data / "kitti_flow_sample" / "flow_gt.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(kvalid.numpy(), raw[..., 0] > 0)  # BGR: valid is OpenCV's channel 0
    u = (raw[..., 2].astype(float) - 2**15) / 64
    np.testing.assert_allclose(kflow[0].numpy()[kvalid.numpy()], u[kvalid.numpy()])


def test_dis_lowers_photometric_error_on_sintel(shared_data):
    frames = sorted((shared_data / "sintel_clip").glob("frame_*.png"))[:2]
    img1, img2 = read_rgb(frames[0])[None], read_rgb(frames[1])[None]
    pair = DISFlow("medium")(img1, img2)
    warped, inside = warp(img2, pair.fw)
    mask = inside & pair.valid_fw
    err = (warped - img1).abs().mean(1)[mask].mean()
    base = (img2 - img1).abs().mean(1)[mask].mean()
    assert err < 0.6 * base, (err, base)
    assert 0.5 < pair.valid_fw.float().mean() < 1.0  # the consistency check flags some pixels, not all


def test_dis_recovers_a_known_translation():
    video = MovingShapesVideo(2, num_objects=0, camera_speed=0.0, zoom_rate=0.0)
    img = video.render(0)["image"][None]
    shifted = torch.roll(img, shifts=(2, 3), dims=(2, 3))  # content moves +3 px in x, +2 px in y
    pair = DISFlow("medium")(img, shifted)
    inner = pair.fw[0, :, 10:-10, 10:-10]
    assert abs(inner[0].median() - 3) < 0.25 and abs(inner[1].median() - 2) < 0.25
    assert abs(pair.bw[0, 0, 10:-10, 10:-10].median() + 3) < 0.25


def test_raft_offline_message_and_local_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError, match="not available offline.*flow.checkpoint"):
        RAFTFlow("small")
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    ckpt = tmp_path / "raft_small_local.pth"
    torch.save(raft_small(weights=None).state_dict(), ckpt)
    source = RAFTFlow("small", checkpoint=str(ckpt), num_flow_updates=2)
    assert not any(p.requires_grad for p in source.parameters()) and not source.train().model.training
    pair = source(torch.rand(1, 3, 130, 132), torch.rand(1, 3, 130, 132))  # not divisible by 8: padded inside
    assert pair.fw.shape == (1, 2, 130, 132) and pair.valid_bw.shape == (1, 130, 132)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(RuntimeError):
        RAFTFlow("small", checkpoint=str(tmp_path / "wrong.pth"))


def test_raft_weights_are_an_explicit_choice_with_the_synthetic_default(tmp_path, monkeypatch):
    """FlowE's RAFT saw synthetic data only: the default is C_T_V2, not torchvision's C_T_SKHT_V2 (which
    saw KITTI/HD1K driving data). Each choice resolves to its own cache file and says which offline."""
    import inspect

    from torchvision.models.optical_flow import raft_small

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    assert inspect.signature(RAFTFlow).parameters["weights"].default == "C_T_V2"
    files = {w: RAFTFlow.weights_file("large", w) for w in ("C_T_V2", "C_T_SKHT_V2")}
    assert files == {"C_T_V2": "raft_large_C_T_V2-1bb1363a.pth", "C_T_SKHT_V2": "raft_large_C_T_SKHT_V2-ff5fadd5.pth"}
    for w, name in files.items():
        with pytest.raises(FileNotFoundError, match=f"RAFT-large {w} weights are not available offline.*{name}"):
            RAFTFlow("large", weights=w)
    with pytest.raises(KeyError, match="RAFT-small has no weights 'C_T_SKHT_V2'.*C_T_V2"):
        RAFTFlow("small", weights="C_T_SKHT_V2")
    # torchvision's cache file of the chosen weights is used; a different choice does not pick it up
    cache = tmp_path / "home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(raft_small(weights=None).state_dict(), cache / RAFTFlow.weights_file("small", "C_T_V2"))
    source = RAFTFlow("small", num_flow_updates=3)
    assert source.weights.name == "C_T_V2"
    with pytest.raises(FileNotFoundError, match="RAFT-small C_T_V1.*raft_small_C_T_V1"):
        RAFTFlow("small", weights="C_T_V1")
    # a local file that is torchvision's file of *other* weights would mislabel the run
    with pytest.raises(ValueError, match="C_T_V2 file, but flow.weights='C_T_V1'"):
        RAFTFlow("small", weights="C_T_V1", checkpoint=str(cache / "raft_small_C_T_V2-01064c6d.pth"))
    # num_flow_updates reaches RAFT
    seen = []
    inner = source.model.forward
    source.model.forward = lambda *a, **k: seen.append(k["num_flow_updates"]) or inner(*a, **k)
    source(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128))
    assert seen == [3]


def test_nan_flow_is_rejected():
    nan = torch.full((1, 2, 4, 4), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        FlowPair.from_consistency(nan, nan)
