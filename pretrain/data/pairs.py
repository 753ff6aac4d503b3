"""Frame pairs for FlowE: synthetic video, frame folders, Cityscapes sequences, BDD100K videos.

Every dataset yields the same sample: two views rendered with random affines from a pair of
frames cropped at the same location, the affines, and (for data-side flow sources) the forward and
backward flow of the cropped frames. The objective composes T from these (``geometry.view_flow``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..flow.sources import FlowPair, build_flow_source, flow_cache_key
from ..geometry import random_affine, render_view
from ..registry import DATASETS
from .augment import BYOLViews, normalize, photometric
from .clip_cache import CachedVideo, ClipCache, eight_bit
from .datasets import SeededDataset
from .frames import BadDataError, BadFileCounter, list_images, try_read_rgb
from .synthetic import ShapeWorld, WindowedVideo, video_seed, world_class

log = logging.getLogger("flowssl")

# SimCLR's colour distortion (strength 1): jitter (0.8, 0.8, 0.8, 0.2) w.p. 0.8, grey 0.2, blur 0.5.
SIMCLR_JITTER = (0.8, 0.8, 0.8, 0.2)


class StageTimes:
    """Seconds spent per pipeline stage (decode, flow, resize, augment), when a benchmark asks:
    ``dataset.stage_times = StageTimes()``. Off (``None``) in training."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0


def resized_crop(x: torch.Tensor, size: tuple[int, int], box: tuple[int, int, int, int],
                 mode: str = "bilinear") -> torch.Tensor:
    """``F.interpolate(x, size, mode, align_corners=False, antialias=True)[..., y0:y0+h, x0:x0+w]`` for
    ``box = (y0, x0, h, w)``, computing only the crop when the resize enlarges (antialiasing is then
    a no-op): at the paper's shapes the resized frames are ~4× the crop, and resizing them whole was
    the data pipeline's second cost (benchmarks/data_pipeline.py). ``x`` [N,C,H,W]; bool for
    ``'nearest'`` (valid masks) stays bool."""
    (nh, nw), (y0, x0, ch, cw) = size, box
    h, w = x.shape[-2:]
    if mode == "nearest":  # interpolate's legacy nearest: src = floor(dst · in/out), in float32
        ys = (torch.arange(y0, y0 + ch, dtype=torch.float32) * (h / nh)).floor().long().clamp(max=h - 1)
        xs = (torch.arange(x0, x0 + cw, dtype=torch.float32) * (w / nw)).floor().long().clamp(max=w - 1)
        return x[..., ys[:, None], xs[None, :]]
    if nh < h or nw < w:  # shrinking: antialiasing matters, resize whole
        full = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False, antialias=True)
        return full[..., y0:y0 + ch, x0:x0 + cw]
    # output pixel j sits at normalised (2j + 1)/nw − 1 under align_corners=False; 'border' = interpolate's clamp
    gx = (2 * torch.arange(x0, x0 + cw, dtype=torch.float32) + 1) / nw - 1
    gy = (2 * torch.arange(y0, y0 + ch, dtype=torch.float32) + 1) / nh - 1
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def info_keys(info: dict[str, Any] | None) -> str:
    keys = (info or {}).get("keys")
    return f"pair {', '.join(map(str, keys))}" if keys else "this pair"


class FramePairs(SeededDataset):
    """Base: subclasses implement :meth:`load_pair`; this class crops, computes flow, makes views."""

    def __init__(self, seed: int = 0, crop_size: tuple[int, int] = (512, 1024),
                 scale_range: tuple[float, float] = (0.75, 1.25), resize_to: tuple[int, int] | None = None,
                 flow: dict[str, Any] | None = None, affine: dict[str, Any] | None = None,
                 colour: bool = True, return_frames: bool = False, max_bad_fraction: float = 0.01,
                 mode: str = "flowe", same_frame: bool = False, window: float = 0.5,
                 view_size: tuple[int, int] | None = None, byol_crop_scale: tuple[float, float] = (0.2, 1.0)) -> None:
        super().__init__(seed)
        if mode not in ("flowe", "byol"):
            raise ValueError(f"data.mode must be 'flowe' or 'byol', got '{mode}'")
        # mode='byol': FlowE Table 1's "BYOL (crop)" (same_frame=True) and "BYOL (crop w/ video)"
        # (same_frame=False): both random-resized crops come from one small window (``window`` of the
        # crop side) at the same place — of one frame, or of two neighbouring frames.
        self.mode, self.same_frame, self.window = mode, same_frame, window
        self.byol_views = BYOLViews(tuple(view_size or crop_size), tuple(byol_crop_scale)) if mode == "byol" else None
        self.crop_size = tuple(crop_size)
        self.scale_range = tuple(scale_range)
        self.resize_to = tuple(resize_to) if resize_to else None
        self.flow_source = build_flow_source(flow)
        if self.flow_source is not None and not self.flow_source.runs_in_data:
            raise ValueError(f"flow source {flow} runs on the training device: put it under model.flow")
        self.affine = {"scale": (0.5, 2.0), "rotation": 30.0, "translate": 0.0, **(affine or {})}
        self.photometric = (photometric(blur_p=0.5, solarize_p=0.0, size=self.crop_size, jitter=SIMCLR_JITTER)
                            if colour else None)
        self.normalize = normalize()
        self.return_frames = return_frames or (self.flow_source is None and mode == "flowe")
        self.bad = BadFileCounter(max_bad_fraction)
        self.stage_times: StageTimes | None = None

    def _stage(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self.stage_times(name) if self.stage_times is not None else contextlib.nullcontext()

    # -- to implement ---------------------------------------------------------------------------
    def load_pair(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]] | None:
        """Two RGB frames [3,H,W] in [0,1] and info for the flow source; None if unreadable."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def _read_pair(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        for _ in range(100):
            pair = self.load_pair(rng)
            if pair is not None:
                return pair
        raise BadDataError(f"{type(self).__name__}: 100 consecutive unreadable pairs; check the dataset")

    def _scale_and_crop(self, rng: np.random.Generator, img1: torch.Tensor, img2: torch.Tensor,
                        flow: FlowPair | None, info: dict[str, Any] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, FlowPair | None]:
        """Resize (e.g. BDD100K → 1080×1920), random scale, then one crop location for both."""
        h, w = img1.shape[-2:]
        base = (self.resize_to[0] / h) if self.resize_to else 1.0
        s = base * rng.uniform(*self.scale_range)
        ch, cw = self.crop_size
        nh, nw = max(ch, round(h * s)), max(cw, round(w * s))
        y0, x0 = int(rng.integers(nh - ch + 1)), int(rng.integers(nw - cw + 1))
        box = (y0, x0, ch, cw)
        frames = resized_crop(torch.stack([img1, img2]), (nh, nw), box)
        if flow is not None:  # flow in pixels of its own grid (a cache may hold it at another size)
            fh, fw = flow.fw.shape[-2:]
            if abs(fw / fh - w / h) > 0.01 * (w / h):
                raise ValueError(f"flow of {info_keys(info)} is {fw}×{fh} but the frames are {w}×{h}: another aspect "
                                 "ratio, so it belongs to other frames; regenerate the flow cache for this dataset")
            vectors = resized_crop(torch.cat([flow.fw, flow.bw]), (nh, nw), box)
            vectors = vectors * torch.tensor([nw / fw, nh / fh])[:, None, None]  # vectors scale with the grid
            masks = resized_crop(torch.cat([flow.valid_fw, flow.valid_bw])[:, None], (nh, nw), box, "nearest")
            flow = FlowPair(vectors[0], vectors[1], masks[0, 0], masks[1, 0])
        return frames[0], frames[1], flow

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        with self._stage("decode"):
            img1, img2, info = self._read_pair(rng)
        flow = None
        if self.flow_source is not None and self.flow_source.needs_full_frames:
            with self._stage("flow"):
                flow = self.flow_source(img1[None], img2[None], info)
        with self._stage("resize"):
            img1, img2, flow = self._scale_and_crop(rng, img1, img2, flow, info)
        if self.byol_views is not None:
            with self._stage("augment"):
                return self._byol_sample(rng, img1, img2)
        if self.flow_source is not None and flow is None:
            with self._stage("flow"):
                f = self.flow_source(img1[None], img2[None], info)
            flow = FlowPair(f.fw[0], f.bw[0], f.valid_fw[0], f.valid_bw[0])
        with self._stage("augment"):
            out = self._views(rng, img1, img2)
        if flow is not None:
            out.update(flow_fw=flow.fw, flow_bw=flow.bw, valid_fw=flow.valid_fw, valid_bw=flow.valid_bw)
        if self.return_frames:
            out.update(frame1=img1, frame2=img2)
        return out

    def _views(self, rng: np.random.Generator, img1: torch.Tensor, img2: torch.Tensor) -> dict[str, torch.Tensor]:
        """FlowE's two views: a random affine of each frame (eq. 2–3), colour distortion, normalisation."""
        a1 = random_affine(rng, self.crop_size, **self.affine)
        a2 = random_affine(rng, self.crop_size, **self.affine)
        views = render_view(torch.stack([img1, img2]), torch.stack([a1, a2]))
        out: dict[str, torch.Tensor] = {"affine1": a1, "affine2": a2}
        for i, v in enumerate(views, 1):
            if self.photometric is not None:
                v = self.photometric(v)
            out[f"view{i}"] = self.normalize(v)
        return out


    def _byol_sample(self, rng: np.random.Generator, img1: torch.Tensor, img2: torch.Tensor) -> dict[str, torch.Tensor]:
        ch, cw = self.crop_size
        wh, ww = max(8, round(ch * self.window)), max(8, round(cw * self.window))
        y0, x0 = int(rng.integers(ch - wh + 1)), int(rng.integers(cw - ww + 1))
        win = (..., slice(y0, y0 + wh), slice(x0, x0 + ww))
        second = img1 if self.same_frame else img2
        return {"view1": self.byol_views.view1(img1[win]), "view2": self.byol_views.view2(second[win])}


@DATASETS.register_module()
class SyntheticPairs(FramePairs):
    """Pairs of the embedded synthetic video; ``flow=dict(type='ground_truth')`` gives exact flow.

    Videos are ``height``×``width``; with ``scale_range=(1, 1)`` (the default) each pair renders only
    its ``crop_size`` window, which is the crop of the whole frame at the cost of the crop.
    ``world='coloured'`` is the first world (class = colour), for comparisons. Frames are 8-bit, as a
    video file's (:func:`~pretrain.data.clip_cache.eight_bit`). ``clip_cache=<folder>``: render every
    video's frames (and, for ground-truth flow, every pair's flow) once into that folder when the dataset
    is built, and crop samples from there (:mod:`pretrain.data.clip_cache`) — the same samples."""

    def __init__(self, seed: int = 0, num_videos: int = 64, num_frames: int = 32, frame_gap: int = 2,
                 height: int = 128, width: int = 256, video: dict | None = None, world: str = "crowded",
                 clip_cache: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("crop_size", (height, width))
        kwargs.setdefault("scale_range", (1.0, 1.0))
        super().__init__(seed, **kwargs)
        self.num_videos, self.num_frames, self.frame_gap = num_videos, num_frames, frame_gap
        self.height, self.width, self.video_kwargs = height, width, dict(video or {})
        self.world_class = world_class(world)
        self.clips = None
        if clip_cache is not None:
            self.clips = ClipCache(clip_cache, world, height, width, self.video_kwargs)
            exact_flow = (kwargs.get("flow") or {}).get("type") == "ground_truth"
            self.clips.ensure([self.video_seed(i) for i in range(num_videos)], num_frames + frame_gap,
                              frame_gap if exact_flow else None, num_frames)

    def video_seed(self, index: int) -> int:
        return video_seed(self.seed, "pretrain", index)

    @lru_cache(maxsize=256)  # noqa: B019
    def video(self, index: int) -> ShapeWorld | CachedVideo:
        if self.clips is not None:
            return CachedVideo(self.clips, self.video_seed(index))
        return self.world_class(self.video_seed(index), self.height, self.width, **self.video_kwargs)

    def load_pair(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        v: ShapeWorld | CachedVideo | WindowedVideo = self.video(int(rng.integers(self.num_videos)))
        t = int(rng.integers(self.num_frames))
        (ch, cw), key = self.crop_size, f"{v.seed}_{t}"
        if self.scale_range == (1.0, 1.0) and (ch, cw) != (self.height, self.width):
            y0, x0 = int(rng.integers(self.height - ch + 1)), int(rng.integers(self.width - cw + 1))
            v, key = WindowedVideo(v, (y0, x0, ch, cw)), f"{key}_{y0}_{x0}"
        info = {"videos": [v], "times": [(t, t + self.frame_gap)], "keys": [key]}
        return eight_bit(v.render(t)["image"]), eight_bit(v.render(t + self.frame_gap)["image"]), info


class _GroupedFrames(FramePairs):
    """Pairs (i, i + interval) inside groups of sorted frames (one group per sequence)."""

    def __init__(self, groups: dict[str, list[Path]], interval: int, root: Path, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(seed, **kwargs)
        self.interval, self.root = interval, Path(root)
        self.pairs = [(g[i], g[i + interval]) for g in groups.values() for i in range(len(g) - interval)]
        if not self.pairs:
            raise FileNotFoundError(f"{type(self).__name__}: no sequence has two frames {interval} apart")

    def pair_key(self, a: Path, b: Path) -> str:
        """The flow-cache key: the folder relative to the data root, so sequences whose leaf folders
        share a name (KITTI raw's ``.../image_02/data``) never share a flow; frame names are escaped
        so that no two pairs share a key (:func:`~pretrain.flow.sources.flow_cache_key`)."""
        return flow_cache_key(a.parent.relative_to(self.root).as_posix(), a.stem, b.stem)

    def load_pair(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]] | None:
        a, b = self.pairs[int(rng.integers(len(self.pairs)))]
        (img1, why1), (img2, why2) = try_read_rgb(a), try_read_rgb(b)
        for path, img, why in ((a, img1, why1), (b, img2, why2)):
            self.bad.record(path, img is not None, why)
        if img1 is None or img2 is None:
            return None
        if img1.shape != img2.shape:
            self.bad.record(b, False, f"frames of one pair differ in size: {a.name} is "
                                      f"{img1.shape[2]}×{img1.shape[1]}, {b.name} is {img2.shape[2]}×{img2.shape[1]}")
            return None
        return img1, img2, {"keys": [self.pair_key(a, b)]}


@DATASETS.register_module()
class FrameFolderPairs(_GroupedFrames):
    """``root/<sequence>/<frames>`` sorted by name; pairs ``interval`` frames apart (UrbanCity: 10 fps,
    0.4 s → interval 4)."""

    def __init__(self, root: str, interval: int = 4, seed: int = 0, **kwargs: Any) -> None:
        groups: dict[str, list[Path]] = defaultdict(list)
        for f in list_images(root):
            groups[str(f.parent)].append(f)
        super().__init__(groups, interval, Path(root), seed, **kwargs)


CITYSCAPES_SEQ = re.compile(r"^(?P<city>[a-z_]+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")


@DATASETS.register_module()
class CityscapesSequencePairs(_GroupedFrames):
    """``leftImg8bit_sequence/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png`` snippets
    (30 frames at 17 Hz); pairs ``interval`` frames apart inside a snippet (default 8 ≈ 0.5 s)."""

    def __init__(self, root: str, split: str = "train", interval: int = 8, seed: int = 0, **kwargs: Any) -> None:
        base = Path(root) / "leftImg8bit_sequence" / split
        groups: dict[str, list[Path]] = defaultdict(list)
        for f in list_images(base):
            m = CITYSCAPES_SEQ.match(f.name)
            if m:
                groups[f"{m['city']}_{m['seq']}"].append(f)
        for g in groups.values():
            g.sort(key=lambda p: int(CITYSCAPES_SEQ.match(p.name)["frame"]))
        super().__init__(_split_at_gaps(groups), interval, base, seed, **kwargs)


def _split_at_gaps(groups: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """Split each sequence into runs of consecutive frame numbers (the 30-frame snippets)."""
    out: dict[str, list[Path]] = {}
    for key, files in groups.items():
        run: list[Path] = []
        prev = None
        for f in files:
            n = int(CITYSCAPES_SEQ.match(f.name)["frame"])
            if prev is not None and n != prev + 1:
                out[f"{key}_{len(out)}"] = run
                run = []
            run.append(f)
            prev = n
        out[f"{key}_{len(out)}"] = run
    return out


VIDEO_SUFFIXES = (".mov", ".mp4", ".avi", ".mkv")


@DATASETS.register_module()
class VideoPairs(FramePairs):
    """Random frame pairs ``interval_s`` apart from video files (BDD100K: .mov, 30 fps, 0.5 s; frames
    are upsampled to 1080×1920 as in FlowE §4.2 via ``resize_to``). Decoded with OpenCV (FFmpeg).
    ``interval_s=(lo, hi)`` draws the gap per pair, uniformly in whole frames (PooDLe: 15–30 frames)."""

    def __init__(self, root: str, interval_s: float | tuple[float, float] = 0.5, seed: int = 0,
                 resize_to: tuple[int, int] | None = (1080, 1920), **kwargs: Any) -> None:
        super().__init__(seed, resize_to=resize_to, **kwargs)
        root_p = Path(root)
        if not root_p.is_dir():
            raise FileNotFoundError(f"video folder {root_p} does not exist; set data.root")
        self.videos = sorted(p for p in root_p.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        if not self.videos:
            raise FileNotFoundError(f"video folder {root_p} holds no {'/'.join(VIDEO_SUFFIXES)} files")
        self.interval_s = interval_s

    def load_pair(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]] | None:
        path = self.videos[int(rng.integers(len(self.videos)))]
        frames = read_video_pair(path, rng, self.interval_s)
        self.bad.record(path, frames is not None)
        if frames is None:
            return None
        return frames[0], frames[1], {"keys": [path.stem]}


# Frames OpenCV decodes per video file, keyed by (path, size, mtime): counted once per process.
_FRAME_COUNTS: dict[tuple[str, int, int], int] = {}


def video_frame_count(cap: cv2.VideoCapture, path: Path) -> int:
    """The number of frames OpenCV decodes from ``path``. The container's count (``CAP_PROP_FRAME_COUNT``)
    is an estimate from duration × fps that can be off either way — too high, a seek past the real end
    returns no frame (the video would be counted as bad); too low, the last frames are never drawn.
    It is used when it checks out (frame n − 1 decodes after a seek and nothing follows it); otherwise
    the frames are counted by decoding them all. Once per file and process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FRAME_COUNTS:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if n <= 0 or not cap.set(cv2.CAP_PROP_POS_FRAMES, n - 1) or not cap.grab() or cap.grab():
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            n = 0
            while cap.grab():
                n += 1
        _FRAME_COUNTS[key] = n
    return _FRAME_COUNTS[key]


def read_video_pair(path: Path, rng: np.random.Generator,
                    interval_s: float | tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Two frames ``interval_s`` (or a gap drawn in [lo, hi] s) apart at a random time, or None if the
    video cannot be decoded. Frames are found by index (``CAP_PROP_POS_FRAMES``: OpenCV seeks to the
    keyframe before and decodes forward), not by time; the frame count is checked
    (:func:`video_frame_count`). tests/test_video_pairs.py proves the pairs exactly ``gap`` frames
    apart and equal to sequential decoding on H.264 with B-frames (mp4/mov, 30/29.97 fps)."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        n = video_frame_count(cap, path)
        if isinstance(interval_s, (tuple, list)):
            gap = max(1, int(rng.integers(round(interval_s[0] * fps), round(interval_s[1] * fps) + 1)))
        else:
            gap = max(1, round(interval_s * fps))
        if n <= gap:
            return None
        i = int(rng.integers(n - gap))
        out = []
        for idx in (i, i + gap):
            cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
            ok, bgr = cap.read()
            if not ok or bgr is None:
                return None
            out.append(torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1).float() / 255)
        return out[0], out[1]
    finally:
        cap.release()
