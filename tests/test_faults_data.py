"""Bad data (issue 20, items 11-13): each test feeds the exact bad file and checks that it is
refused in one line naming the file (exit 2 where it is what the command was asked for), or
skipped and counted like any other unreadable frame, and what is left on disk.

Truncated JPEG/PNG frames, headers claiming 60000×60000 (made by patching a tiny file's header,
never allocated), hostile ``flow_cache.json`` / ``status.json``, ambiguous flow-cache keys,
NaN/Inf in ``.flo`` files, corrupt BDD100K boxes and oversized images behind the detectron2 loaders.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flowssl.cli import main
from pretrain.trainer import checkpoints_in

from .conftest import REPO, TINY, cli_options

FRAMES_CONFIG = REPO / "configs" / "pretrain" / "flowe_r50_frames.py"


def _textured(seed: int, h: int = 64, w: int = 128) -> np.ndarray:
    return cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)


def truncated_jpeg(img: np.ndarray) -> bytes:
    """A real JPEG cut at 60 % of its bytes: OpenCV decodes it with grey rows and a warning only."""
    data = cv2.imencode(".jpg", img)[1].tobytes()
    return data[: int(len(data) * 0.6)]


def truncated_png(img: np.ndarray) -> bytes:
    data = cv2.imencode(".png", img)[1].tobytes()
    return data[: int(len(data) * 0.6)]


def huge_png(width: int = 60000, height: int = 60000) -> bytes:
    """A valid 8×8 PNG whose IHDR (with a correct CRC) claims ``width``×``height``."""
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    ihdr = bytearray(png[12:29])  # chunk type + 13 data bytes: width, height, ...
    ihdr[4:12] = struct.pack(">II", width, height)
    return png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + png[33:]


def huge_jpeg(width: int = 60000, height: int = 60000) -> bytes:
    """A valid 8×8 JPEG whose SOF0 claims ``width``×``height``."""
    jpg = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpg)


BAD_FRAMES = {
    "truncated.jpg": (lambda: truncated_jpeg(_textured(9)), "truncated JPEG"),
    "truncated.png": (lambda: truncated_png(_textured(9)), "truncated PNG"),
    "huge.png": (huge_png, "claims 3,600,000,000 pixels"),
    "huge.jpg": (huge_jpeg, "claims 3,600,000,000 pixels"),
}


def _one_line_error(err: str) -> str:
    """The ``flowssl: error:`` line; asserts there is no traceback and at most the --debug hint."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and 1 <= len(lines) <= 2, err
    assert lines[0].startswith("flowssl: error: "), err
    return lines[0]


# -- item 11/12: truncated frames and headers claiming 60000×60000 -----------------------------

def test_the_bad_frames_are_what_they_claim_to_be(tmp_path):
    """Guard the fixtures: ``cv2.imread`` (the reader before the fix) decodes the truncated JPEG as a
    whole image with grey rows and only a warning, and fails on the 60000×60000 headers."""
    path = tmp_path / "t.jpg"
    path.write_bytes(truncated_jpeg(_textured(9)))
    partial = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert partial is not None and partial.shape == (64, 128, 3)
    for data in (huge_png(), huge_jpeg()):
        path.write_bytes(data)
        try:
            out = cv2.imread(str(path), cv2.IMREAD_COLOR)
        except cv2.error:
            out = None
        assert out is None


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_bad_frame_is_refused_naming_the_file(name, tmp_path):
    from pretrain.data.frames import UnreadableImageError, load_rgb, read_rgb

    make, reason = BAD_FRAMES[name]
    path = tmp_path / name
    path.write_bytes(make())
    assert read_rgb(path) is None
    with pytest.raises(UnreadableImageError, match=reason) as info:
        load_rgb(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), _textured(1))
    assert load_rgb(good).shape == (3, 64, 128)  # an intact JPEG still reads


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_frame_pairs_skip_and_count_the_bad_frame(name, tmp_path, caplog):
    from pretrain.data.pairs import FrameFolderPairs

    seq = tmp_path / "frames" / "seq"
    seq.mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(seq / f"{i:06d}.png"), _textured(i))
    (seq / "000002.png").unlink()
    make, reason = BAD_FRAMES[name]
    bad = seq / f"000002{Path(name).suffix}"
    bad.write_bytes(make())
    ds = FrameFolderPairs(str(tmp_path / "frames"), interval=1, crop_size=(32, 64), colour=False,
                          flow={"type": "identity"}, max_bad_fraction=1.0)
    with caplog.at_level(logging.WARNING, "flowssl"):
        samples = [ds[i] for i in range(12)]
    assert all(s["view1"].shape == (3, 32, 64) for s in samples)
    assert ds.bad.bad > 0  # counted: before the fix the truncated one was trained on, the huge one crashed
    assert f"skipping {bad}: " in caplog.text and reason in caplog.text


def test_image_folder_views_skip_and_count_a_huge_header(tmp_path, caplog):
    from pretrain.data.frames import ImageFolderViews

    cv2.imwrite(str(tmp_path / "a.png"), _textured(0))
    (tmp_path / "b.png").write_bytes(huge_png())
    ds = ImageFolderViews(str(tmp_path), crop_size=(16, 32), resize_to=None, max_bad_fraction=1.0)
    with caplog.at_level(logging.WARNING, "flowssl"):
        for i in range(8):
            ds[i]
    assert ds.bad.bad > 0 and f"{tmp_path / 'b.png'}: its header claims" in caplog.text


def test_pretraining_counts_truncated_and_huge_frames_and_finishes(tmp_path, capsys, caplog):
    """The whole CLI run: both bad frames are skipped with a warning naming them; the run ends."""
    seq = tmp_path / "frames" / "seq"
    seq.mkdir(parents=True)
    base = _textured(0)
    for i in range(8):
        cv2.imwrite(str(seq / f"{i:06d}.png"), np.roll(base, 2 * i, 1))
    (seq / "000003.png").unlink()
    (seq / "000003.jpg").write_bytes(truncated_jpeg(np.roll(base, 6, 1)))
    (seq / "000005.png").write_bytes(huge_png())
    cfg = tmp_path / "frames_cfg.py"
    cfg.write_text(f"_base_ = [{str(REPO / 'configs/pretrain/flowe_r14_synthetic_demo.py')!r}]\n"
                   f"data = dict(type='FrameFolderPairs', _delete_=True, root={str(tmp_path / 'frames')!r}, "
                   "interval=1, crop_size=(32, 64), scale_range=(1.0, 1.0), flow=dict(type='identity'), "
                   "max_bad_fraction=0.9)\n")
    opts = cli_options({k: v for k, v in TINY.items() if not k.startswith("data.")})
    with caplog.at_level(logging.WARNING, "flowssl"):
        code = main(["pretrain", str(cfg), "--work-dir", str(tmp_path / "w"), "--cfg-options", *opts])
    assert code == 0, capsys.readouterr().err
    assert checkpoints_in(tmp_path / "w")[-1][0] == 6
    assert f"skipping {seq / '000003.jpg'}: truncated JPEG" in caplog.text
    assert f"skipping {seq / '000005.png'}: its header claims 3,600,000,000 pixels" in caplog.text


@pytest.mark.parametrize("name", ["truncated.jpg", "huge.png"])
def test_flow_show_of_a_bad_frame_is_one_line_exit_2(name, tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / name
    cv2.imwrite(str(good), _textured(0))
    make, reason = BAD_FRAMES[name]
    bad.write_bytes(make())
    for cmd in (["flow", "show"], ["show", "pair"]):
        code = main([*cmd, str(good), str(bad), "--out", str(tmp_path / "out")])
        line = _one_line_error(capsys.readouterr().err)
        assert code == 2 and str(bad) in line and reason in line
    assert not (tmp_path / "out").exists()


def test_flow_precompute_counts_the_bad_frames_naming_them(tmp_path, capsys):
    seq = tmp_path / "frames" / "seq"
    seq.mkdir(parents=True)
    base = _textured(0)
    for i in range(5):
        cv2.imwrite(str(seq / f"{i:06d}.png"), np.roll(base, 2 * i, 1))
    (seq / "000001.png").unlink()
    (seq / "000001.jpg").write_bytes(truncated_jpeg(np.roll(base, 2, 1)))
    (seq / "000003.png").write_bytes(huge_png())
    out = tmp_path / "cache"
    code = main(["flow", "precompute", str(FRAMES_CONFIG), "--out", str(out), "--cfg-options",
                 f"data.root={tmp_path / 'frames'}", "data.interval=1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "0 computed" in captured.out and "4 unreadable" in captured.out  # every pair touches a bad frame
    text = captured.out + captured.err
    assert f"{seq / '000001.jpg'} cannot be used: truncated JPEG" in text
    assert f"{seq / '000003.png'} cannot be used: its header claims 3,600,000,000 pixels" in text
    assert not list(out.rglob("*_fw.png"))


# -- flow_cache.json / status.json ------------------------------------------------------------

def _cache(tmp_path: Path, meta: str | bytes) -> Path:
    from pretrain.flow.io import write_flow_png

    seq = tmp_path / "frames" / "seq"
    seq.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(seq / "000000.png"), _textured(1))
    cv2.imwrite(str(seq / "000001.png"), _textured(2))
    cache = tmp_path / "cache"
    (cache / "seq").mkdir(parents=True, exist_ok=True)
    flow = torch.tensor([3.0, -1.0])[:, None, None].expand(2, 64, 128)
    write_flow_png(cache / "seq" / "000000__000001_fw.png", flow, scale=64.0)
    write_flow_png(cache / "seq" / "000000__000001_bw.png", -flow, scale=64.0)
    (cache / "flow_cache.json").write_bytes(meta if isinstance(meta, bytes) else meta.encode())
    return cache


def _meta(**changes) -> str:
    from pretrain.flow.sources import CACHE_KEY_FORMAT

    info = {"scale": 64.0, "key_format": CACHE_KEY_FORMAT}
    info.update(changes)
    return json.dumps(info)


HOSTILE_META = {
    "negative scale": (_meta(scale=-64.0), "'scale' is -64.0, not a positive finite number"),
    "zero scale": (_meta(scale=0), "'scale' is 0, not a positive finite number"),
    "null scale": (_meta(scale=None), "'scale' is None"),
    "list scale": (_meta(scale=[64]), "'scale' is [64]"),
    "string scale": (_meta(scale="64"), "'scale' is '64'"),
    "bool scale": (_meta(scale=True), "'scale' is True"),
    "NaN scale": (_meta(scale=float("nan")), "'scale' is nan"),
    "no scale": (json.dumps({"key_format": "relative-path/2"}), "'scale' is None"),
    "not JSON": ('{"scale": 64.0, "key_format": "relative-pa', "is not valid JSON"),
    "binary": (b"\xff\xfe\x00garbage", "cannot be read"),
    "a list": ("[64.0]", "holds a list, not a JSON object"),
    "unknown key format": (_meta(key_format=7), "unknown key_format 7"),
    "valid is a list": (_meta(valid=[1, 2]), "'valid' is [1, 2], not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_META))
def test_hostile_flow_cache_json_is_refused_naming_it(case, tmp_path, capsys):
    """Pretraining reading the cache and precompute adding to it both refuse, in one line naming
    flow_cache.json; nothing is trained, nothing in the cache changes."""
    meta, expected = HOSTILE_META[case]
    cache = _cache(tmp_path, meta)
    before = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"_base_ = [{str(REPO / 'configs/pretrain/flowe_r14_synthetic_demo.py')!r}]\n"
                   f"data = dict(type='FrameFolderPairs', _delete_=True, root={str(tmp_path / 'frames')!r}, "
                   f"interval=1, crop_size=(32, 64), flow=dict(type='precomputed', root={str(cache)!r}))\n")
    opts = cli_options({k: v for k, v in TINY.items() if not k.startswith("data.")})
    code = main(["pretrain", str(cfg), "--work-dir", str(tmp_path / "w"), "--cfg-options", *opts])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2 and str(cache / "flow_cache.json") in line and expected in line, line
    assert not checkpoints_in(tmp_path / "w")
    code = main(["flow", "precompute", str(FRAMES_CONFIG), "--out", str(cache), "--cfg-options",
                 f"data.root={tmp_path / 'frames'}", "data.interval=1"])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2 and str(cache / "flow_cache.json") in line and expected in line, line
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before


def test_negative_scale_would_have_flipped_every_flow(tmp_path):
    """What the refusal prevents: the same PNGs read with scale -64 are the flow reversed."""
    from pretrain.flow.io import FlowFileError, read_flow_png

    cache = _cache(tmp_path, _meta())
    png = cache / "seq" / "000000__000001_fw.png"
    assert torch.allclose(read_flow_png(png, 64.0)[0][:, 0, 0], torch.tensor([3.0, -1.0]))
    with pytest.raises(FlowFileError, match=f"flow PNG {png}: the fixed-point scale must be a positive"):
        read_flow_png(png, -64.0)


@pytest.mark.parametrize("scale", ["-64", "0", "nan", "inf"])
def test_flow_precompute_refuses_a_bad_scale_before_writing(scale, tmp_path, capsys):
    seq = tmp_path / "frames" / "seq"
    seq.mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(seq / f"{i:06d}.png"), _textured(i))
    code = main(["flow", "precompute", str(FRAMES_CONFIG), "--out", str(tmp_path / "cache"), f"--scale={scale}",
                 "--cfg-options", f"data.root={tmp_path / 'frames'}", "data.interval=1"])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2 and "--scale must be a positive finite number" in line
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("content", ['{"pretrain/byol/seed0": {"state": "do', "[]", "\xff\xfe"])
def test_corrupt_bench_status_json_is_one_line_naming_it(content, tmp_path, capsys):
    plan = tmp_path / "plan.py"
    plan.write_text("methods = dict()\nreadouts = []\nseeds = [0]\n")
    work = tmp_path / "w"
    work.mkdir()
    status = work / "status.json"
    status.write_bytes(content.encode("latin-1"))
    code = main(["bench", str(plan), "--work-dir", str(work)])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2 and f"bench status file {status}" in line and "move it away or delete it" in line
    assert status.read_bytes() == content.encode("latin-1") and sorted(work.iterdir()) == [status]


# -- flow-cache keys --------------------------------------------------------------------------

def test_frame_names_with_double_underscores_never_share_a_cache_key(tmp_path, capsys):
    """Sorted x, x__y, y__z, z with interval 2 pair (x, y__z) and (x__y, z): both were keyed
    'x__y__z', so the second pair was 'already there' and trained on the first pair's flow."""
    from pretrain.data.pairs import FrameFolderPairs
    from pretrain.flow.io import read_flow_png

    seq = tmp_path / "frames" / "seq"
    seq.mkdir(parents=True)
    a, b = _textured(1), _textured(2)
    frames = {"x": a, "y__z": np.roll(a, 3, 1), "x__y": b, "z": np.roll(b, -5, 1)}
    for name, img in frames.items():
        cv2.imwrite(str(seq / f"{name}.png"), img)
    cache = tmp_path / "cache"
    code = main(["flow", "precompute", str(FRAMES_CONFIG), "--out", str(cache), "--cfg-options",
                 f"data.root={tmp_path / 'frames'}", "data.interval=2"])
    assert code == 0 and "2 computed, 0 already there" in capsys.readouterr().out
    fw = {p.name: float(read_flow_png(p)[0][0, 16:-16, 16:-16].median()) for p in (cache / "seq").glob("*_fw.png")}
    assert sorted(fw) == ["x%5F%5Fy__z_fw.png", "x__y%5F%5Fz_fw.png"]
    assert abs(fw["x__y%5F%5Fz_fw.png"] - 3) < 0.5 and abs(fw["x%5F%5Fy__z_fw.png"] + 5) < 0.5
    ds = FrameFolderPairs(str(tmp_path / "frames"), interval=2, crop_size=(64, 128), scale_range=(1.0, 1.0),
                          colour=False, flow={"type": "precomputed", "root": str(cache)})
    assert sorted(ds.pair_key(p, q) for p, q in ds.pairs) == ["seq/x%5F%5Fy__z", "seq/x__y%5F%5Fz"]


def test_escaped_cache_keys_are_unambiguous_and_keep_plain_names():
    from pretrain.flow.sources import escape_stem, flow_cache_key

    assert flow_cache_key("a/b", "000001", "frame_0002") == "a/b/000001__frame_0002"  # unchanged: old caches read
    names = ["x", "y", "x__y", "y__z", "z", "x_", "_y", "a%5F%5Fb", "a__b", "%", "_", "__", "a_b"]
    keys = {(p, q): flow_cache_key("s", p, q) for p in names for q in names}
    assert len(set(keys.values())) == len(keys)
    assert all("__" not in escape_stem(n) and not escape_stem(n).startswith("_") for n in names)


def test_old_format_cache_stays_readable_for_plain_names_and_refuses_escaped_ones(tmp_path, capsys):
    from pretrain.data.pairs import FrameFolderPairs
    from pretrain.flow.io import FlowFileError

    cache = _cache(tmp_path, _meta(key_format="relative-path/1"))
    ds = FrameFolderPairs(str(tmp_path / "frames"), interval=1, crop_size=(64, 128), scale_range=(1.0, 1.0),
                          colour=False, flow={"type": "precomputed", "root": str(cache)})
    assert torch.allclose(ds[0]["flow_fw"][:, 5, 5], torch.tensor([3.0, -1.0]))
    # a frame name that needed escaping: the old format may have stored another pair's flow under its key
    seq = tmp_path / "frames" / "seq"
    (seq / "000001.png").rename(seq / "000001__b.png")
    ds = FrameFolderPairs(str(tmp_path / "frames"), interval=1, crop_size=(64, 128), scale_range=(1.0, 1.0),
                          colour=False, flow={"type": "precomputed", "root": str(cache)})
    with pytest.raises(FlowFileError, match=f"flow cache {cache} has key format 'relative-path/1'.*fill a new cache"):
        ds[0]
    before = (cache / "flow_cache.json").read_bytes()
    code = main(["flow", "precompute", str(FRAMES_CONFIG), "--out", str(cache), "--cfg-options",
                 f"data.root={tmp_path / 'frames'}", "data.interval=1"])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2 and "keys were ambiguous" in line and "use a new --out" in line
    assert (cache / "flow_cache.json").read_bytes() == before and not list(cache.rglob("*%5F*"))


# -- .flo -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_flo_with_nan_or_inf_is_refused_not_read_as_unknown(value, tmp_path):
    from pretrain.flow.io import FlowFileError, read_flo

    flow = np.zeros((3, 4, 2), np.float32)
    flow[1, 2, 0] = value
    flow[0, 0] = 1e10  # Middlebury's real "unknown" marker stays accepted below
    path = tmp_path / "bad.flo"
    path.write_bytes(b"PIEH" + struct.pack("<ii", 4, 3) + flow.tobytes())
    with pytest.raises(FlowFileError, match=f"flow file {path} contains NaN or Inf"):
        read_flo(path)
    flow[1, 2, 0] = 0
    path.write_bytes(b"PIEH" + struct.pack("<ii", 4, 3) + flow.tobytes())
    _, valid = read_flo(path)
    assert not valid[0, 0] and valid.sum() == 11


# -- BDD100K boxes and oversized images behind the detectron2 loaders ----------------------------

def _bdd(shared_data: Path, tmp_path: Path, edit) -> tuple[Path, Path]:
    """The real det_box2d example at a quarter size (images written), with ``edit(frames)`` applied."""
    from .test_d2_datasets import resized_bdd100k

    label = resized_bdd100k(shared_data / "bdd100k_labels_sample" / "det_box2d_example.json", tmp_path, "val", 0.25)
    frames = json.loads(label.read_text())
    edit(frames)
    label.write_text(json.dumps(frames))
    return label, tmp_path / "bdd100k" / "images" / "100k" / "val"


def _person(frames: list) -> dict:
    return next(lab for lab in frames[0]["labels"] if lab["category"] == "person")["box2d"]


@pytest.mark.parametrize(("change", "expected"), [
    ({"x1": -4.0}, "box2d x1 is -4.0, not a finite non-negative number"),
    ({"y2": float("nan")}, "box2d y2 is nan"),
    ({"x2": float("inf")}, "box2d x2 is inf"),
    ({"y1": "12"}, "box2d y1 is '12'"),
    ({"x1": None}, "box2d x1 is None"),
    ({"x1": 30.0, "x2": 20.0}, "box2d is inverted (x1=30, y1="),
    ({"y1": 100.0, "y2": 80.0}, "box2d is inverted"),
])
def test_corrupt_bdd100k_boxes_are_errors_naming_the_file_and_frame(change, expected, shared_data, tmp_path):
    from d2_plugin.datasets import load_bdd100k_det

    label, images = _bdd(shared_data, tmp_path, lambda frames: _person(frames).update(change))
    with pytest.raises(ValueError) as info:
        load_bdd100k_det(label, images)
    msg = str(info.value)
    assert f"BDD100K label file {label}, frame 00091078-875c1f73-0000166.jpg" in msg and expected in msg
    assert "\n" not in msg


def test_zero_size_bdd100k_boxes_are_skipped_and_counted(shared_data, tmp_path, caplog):
    """The released labels hold x1 == x2 boxes (ucbdrive/bdd100k#4): no pixel, no error."""
    from d2_plugin.datasets import load_bdd100k_det

    def zero_width(frames: list) -> None:
        box = _person(frames)
        box["x2"] = box["x1"]

    label, images = _bdd(shared_data, tmp_path, zero_width)
    with caplog.at_level(logging.WARNING):
        dicts = load_bdd100k_det(label, images)
    assert dicts[0]["annotations"] == [] and dicts[1]["annotations"] == []
    assert f"{label}: skipped 1 zero-width or zero-height box(es) (first in 00091078-875c1f73-0000166.jpg)" \
        in caplog.text


@pytest.mark.parametrize("make", [huge_jpeg, huge_png])
def test_bdd100k_image_with_a_huge_header_is_refused_naming_it(make, shared_data, tmp_path):
    from d2_plugin.datasets import load_bdd100k_det

    label, images = _bdd(shared_data, tmp_path, lambda frames: None)
    bomb = images / "00091078-875c1f73-0000167.jpg"
    bomb.write_bytes(make())
    with pytest.raises(ValueError, match=f"image {bomb} cannot be used: its header claims 3,600,000,000 pixels"):
        load_bdd100k_det(label, images)


def test_cityscapes_image_with_a_huge_header_or_another_size_is_refused(tmp_path):
    from d2_plugin.datasets import load_cityscapes_instances

    from .test_d2_datasets import _cityscapes_tree

    inst = np.full((16, 32), 26001, np.uint16)
    img_dir, gt_dir = _cityscapes_tree(tmp_path, inst)
    image = img_dir / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    assert len(load_cityscapes_instances(img_dir, gt_dir)) == 1
    image.write_bytes(huge_png())
    with pytest.raises(ValueError, match=f"image {image} cannot be used: its header claims 3,600,000,000 pixels"):
        load_cityscapes_instances(img_dir, gt_dir)
    cv2.imwrite(str(image), np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=f"image {image} is 16x8 but its instance map .* is 32x16"):
        load_cityscapes_instances(img_dir, gt_dir)


def test_registered_detectron2_datasets_refuse_a_huge_image_before_the_mapper(shared_data, tmp_path):
    """Through detectron2's DatasetCatalog: the header check fires when the dicts are built, so PIL's
    DecompressionBombError never escapes from detectron2's reader mid-training."""
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog

    from d2_plugin.datasets import register_flowssl_datasets

    _, images = _bdd(shared_data, tmp_path, lambda frames: None)  # the registered layout, det_val.json
    (images / "00091078-875c1f73-0000166.jpg").write_bytes(huge_jpeg())
    register_flowssl_datasets(tmp_path)
    with pytest.raises(ValueError, match="00091078-875c1f73-0000166.jpg cannot be used: its header claims"):
        DatasetCatalog.get("bdd100k_det_val")
