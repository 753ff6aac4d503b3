"""Video pairs are exact: ``read_video_pair`` returns frames exactly ``gap`` apart, equal to sequential
decoding, on H.264 with B-frames and long keyframe intervals (mp4 and mov, 30 and 29.97 fps), and
counts the frames itself when the container's count is wrong (issue 21.9).

Each test video is written here with PyAV (the ``dev`` extra); every frame carries its index as a
binary code of 16 × 16 blocks, which survives compression, so a decoded frame says which it is."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pretrain.data.pairs as pairs_mod
from pretrain.data.pairs import read_video_pair, video_frame_count

av = pytest.importorskip("av", reason="PyAV writes the H.264 test videos (pip install av)")
PictureType = av.video.frame.PictureType

H, W, BLOCK, BITS = 64, 128, 16, 12


def _frame(index: int) -> np.ndarray:
    """RGB frame: bit k of ``index`` is block k (row-major) white or black; a drifting texture below."""
    img = np.full((H, W, 3), 128, np.uint8)
    for k in range(BITS):
        r, c = divmod(k, W // BLOCK)
        img[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK] = 255 if (index >> k) & 1 else 0
    yy, xx = np.mgrid[0:H // 2, 0:W]
    img[H // 2:] = (96 + 64 * np.sin((xx + 2 * index) / 5.0) * np.cos(yy / 4.0))[..., None].astype(np.uint8)
    return img


def _index(frame: torch.Tensor) -> int:
    """The index a decoded [3,H,W] frame carries (block centres, thresholded)."""
    bits = [frame[:, (k // (W // BLOCK)) * BLOCK + 4:(k // (W // BLOCK) + 1) * BLOCK - 4,
                  (k % (W // BLOCK)) * BLOCK + 4:(k % (W // BLOCK) + 1) * BLOCK - 4].mean() > 0.5
            for k in range(BITS)]
    return sum(int(b) << k for k, b in enumerate(bits))


def _write(path: Path, n: int, fps: Fraction, keyint: int) -> None:
    """H.264 (libx264) with 2 B-frames between references and a keyframe every ``keyint`` frames."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=2:b-adapt=0",
                          "crf": "18"}
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_frame(i), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _sequential(path: Path) -> list[torch.Tensor]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1).float() / 255)
    cap.release()
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, Fraction, int]]:
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # noqa: BLE001 - a PyAV build without the encoder
        pytest.skip("this PyAV build has no libx264 encoder")
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for suffix, fps, keyint, n in (("mp4", Fraction(30), 60, 150), ("mov", Fraction(30000, 1001), 250, 300),
                                   ("mp4", Fraction(30000, 1001), 250, 300), ("mov", Fraction(30), 60, 150)):
        path = root / f"clip_{keyint}_{fps.numerator}.{suffix}"
        _write(path, n, fps, keyint)
        out[path.name] = (path, n, fps, keyint)
    return out


def test_the_test_videos_have_b_frames_long_gops_and_their_indices(videos):
    """The setup is what the claim needs: B-frames, the keyframe interval asked for, and sequential
    decoding (OpenCV) reads every frame's own index."""
    for path, n, fps, keyint in videos.values():
        with av.open(str(path)) as src:
            kinds = [(PictureType(int(f.pict_type)), f.key_frame) for f in src.decode(video=0)]
        assert len(kinds) == n
        assert sum(k == PictureType.B for k, _ in kinds) > n // 3, path.name
        assert [i for i, (_, key) in enumerate(kinds) if key] == list(range(0, n, keyint)), path.name
        frames = _sequential(path)
        assert [_index(f) for f in frames] == list(range(n)), path.name
        cap = cv2.VideoCapture(str(path))
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(float(fps), rel=1e-4)
        cap.release()


@pytest.mark.parametrize("interval_s", [0.5, 1.0])
def test_random_pairs_are_exactly_the_gap_apart_and_equal_sequential_decoding(videos, interval_s, monkeypatch):
    monkeypatch.setattr(pairs_mod, "_FRAME_COUNTS", {})
    for path, _, fps, _ in videos.values():
        frames = _sequential(path)
        gap = round(interval_s * float(fps))
        rng = np.random.default_rng(7)
        seen = set()
        for _ in range(12):
            a, b = read_video_pair(path, rng, interval_s)
            i, j = _index(a), _index(b)
            assert j - i == gap, (path.name, i, j, gap)
            assert torch.equal(a, frames[i]) and torch.equal(b, frames[j]), (path.name, i)
            seen.add(i)
        assert len(seen) > 6  # random starts, across keyframe intervals


def test_pairs_with_a_gap_range_stay_in_the_range(videos, monkeypatch):
    monkeypatch.setattr(pairs_mod, "_FRAME_COUNTS", {})
    path, n, fps, _ = videos["clip_250_30000.mov"]
    frames = _sequential(path)
    rng = np.random.default_rng(0)
    gaps = set()
    for _ in range(12):
        a, b = read_video_pair(path, rng, (0.5, 1.0))
        i, j = _index(a), _index(b)
        assert torch.equal(a, frames[i]) and torch.equal(b, frames[j])
        gaps.add(j - i)
    assert gaps <= set(range(15, 31)) and len(gaps) > 3


class _WrongCount:
    """cv2.VideoCapture whose container frame count is off by ``offset`` (or reported as 0)."""

    def __init__(self, real: type, offset: int | None) -> None:
        self.real, self.offset = real, offset

    def __call__(self, name: str) -> _WrongCount:
        cap = _WrongCount(self.real, self.offset)
        cap.cap = self.real(name)
        return cap

    def get(self, prop: int) -> float:
        value = self.cap.get(prop)
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return 0.0 if self.offset is None else value + self.offset
        return value

    def __getattr__(self, name: str) -> object:
        return getattr(self.__dict__["cap"], name)


@pytest.mark.parametrize("offset", [25, -25, None])
def test_a_wrong_container_count_is_replaced_by_counting_the_frames(videos, offset, monkeypatch):
    """Too high: seeks past the end used to return no frame (a good video counted as bad); too low:
    the last frames were never drawn; 0: no pair at all. Each is detected and the frames counted."""
    path, n, fps, _ = videos["clip_60_30.mp4"]
    monkeypatch.setattr(cv2, "VideoCapture", _WrongCount(cv2.VideoCapture, offset))
    monkeypatch.setattr(pairs_mod, "_FRAME_COUNTS", {})
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) != n  # the lie is in place
    assert video_frame_count(cap, path) == n
    cap.release()
    frames = _sequential(path)
    rng = np.random.default_rng(1)
    gap = 15
    last = 0
    for _ in range(60):
        pair = read_video_pair(path, rng, 0.5)
        assert pair is not None
        i, j = _index(pair[0]), _index(pair[1])
        assert j - i == gap and torch.equal(pair[1], frames[j])
        last = max(last, j)
    assert last >= n - 5  # the end of the video is drawn too


def test_the_true_count_is_trusted_without_decoding_every_frame(videos, monkeypatch):
    """A container count that checks out costs one seek and two grabs, not a decode of the video."""
    path, n, _, _ = videos["clip_250_30000.mov"]
    monkeypatch.setattr(pairs_mod, "_FRAME_COUNTS", {})
    grabs = []
    real = cv2.VideoCapture

    class Counting:
        def __init__(self, name: str) -> None:
            self.cap = real(name)

        def grab(self) -> bool:
            grabs.append(1)
            return self.cap.grab()

        def __getattr__(self, name: str) -> object:
            return getattr(self.__dict__["cap"], name)

    cap = Counting(str(path))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == n
    assert video_frame_count(cap, path) == n and len(grabs) == 2
    assert video_frame_count(cap, path) == n and len(grabs) == 2  # cached
    cap.cap.release()
