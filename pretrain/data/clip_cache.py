"""Pretraining clips rendered once: the synthetic videos' 8-bit frames and exact flow, in .npy files.

Why. Rendering is the synthetic data's whole cost, and without a cache it is paid per sample in the
DataLoader worker: a 64×128 FlowE pair renders two crops and the flow both ways (≈ 0.1 s on one
core), BYOL's :class:`~pretrain.data.datasets.SyntheticFrames` a whole frame — for every sample of
every method, while a narrow encoder trains on 8 pairs in ≈ 0.1 s (benchmarks/pretrain_step.py). With
``clip_cache=<folder>`` (``SyntheticPairs``, ``SyntheticFrames``) each video's frames, and the flow of
each pair the dataset can draw, are rendered once, in the process that builds the dataset (before any
worker starts), and every later sample — of any method and run with the same seed and world —
memory-maps and crops them (benchmarks/data_pipeline.py --clip-cache).

A sample from the cache is the rendered one bit for bit (tests/test_pairs.py): both paths see the
video as an 8-bit video (:func:`eight_bit`, as the readout's PNG frames are), and the flow is the
world's exact float32 flow with its ``valid`` mask (the only parts the ground-truth flow source uses).

Layout (every file written to a temp name and renamed, so a reader never sees half a file)::

    <folder>/<world>-<H>x<W>-<digest>/clip_cache.json        format, world, sizes, video options
    <folder>/<world>-<H>x<W>-<digest>/video-<video seed>/frame-<t>.npy         uint8 [3, H, W]
                                                        label-<t>.npy         uint8 [H, W] (semantic)
                                                        flow-<t1>-<t2>.npy     float32 [2, H, W]
                                                        valid-<t1>-<t2>.npy    bool [H, W]

``<digest>`` hashes the header, so other sizes, worlds or video options get other folders. A video's
folder is named by its seed (:func:`~pretrain.data.world.video_seed` of the run's seed, the split and
the index): runs with one seed share every clip, runs with different seeds none. A header that does
not match, or clips that differ from what the world renders now (a row of one frame and one flow per
video is re-rendered and compared on opening: the world's code changed), are refused with one line
saying to delete the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_path, write_text_atomic
from .synthetic import ShapeWorld, Window, world_class

log = logging.getLogger("flowssl")

FORMAT = "flowssl-clip-cache/1"
HEADER = "clip_cache.json"


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """An RGB image [3,H,W] in [0, 1] as the 8-bit frame a video file would hold."""
    return (image * 255).round().to(torch.uint8)


def from_uint8(frame: torch.Tensor) -> torch.Tensor:
    """An 8-bit frame as float in [0, 1] (the value both the cached and the rendered path return)."""
    return frame.float() / 255


def eight_bit(image: torch.Tensor) -> torch.Tensor:
    """``image`` quantised to 8 bits: the synthetic video as an 8-bit video, cached or not."""
    return from_uint8(to_uint8(image))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Render on one thread: the world's many tiny reductions gain nothing from more, and on a shared
    CPU their threads wait for each other (a 128×256 frame took 2.6 s on 2 busy cores, 0.11 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _save(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


class ClipCache:
    """The clips of one world at one size (and video options) under ``root``; :meth:`ensure` renders
    what is missing, :meth:`video` reads a video back."""

    def __init__(self, root: str | Path, world: str, height: int, width: int,
                 video: dict[str, Any] | None = None) -> None:
        self.world_class = world_class(world)  # an unknown world: its one-line error first
        self.height, self.width, self.video_kwargs = height, width, dict(video or {})
        header = {"format": FORMAT, "world": world, "height": height, "width": width, "video": self.video_kwargs}
        try:
            text = json.dumps(header, sort_keys=True)
        except TypeError:
            raise ValueError(f"data.video {self.video_kwargs!r} holds values JSON cannot record, so a clip cache "
                             "cannot tell it from other options; use numbers and strings, or no clip_cache") from None
        self.header = json.loads(text)  # tuples as lists: what the file holds
        self.dir = Path(root) / f"{world}-{height}x{width}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
        path = self.dir / HEADER
        if path.exists():
            try:
                found = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"clip cache header {path} cannot be read ({exc}); delete {self.dir} to render "
                                 "the clips again") from None
            if found != self.header:
                raise ValueError(f"clip cache {self.dir} holds {found}, not {self.header}; delete the folder to render "
                                 "the clips again, or set another data.clip_cache")
        else:
            write_text_atomic(json.dumps(self.header, indent=1, sort_keys=True), path)

    # -- files ----------------------------------------------------------------------------------
    def frame_path(self, seed: int, t: int) -> Path:
        return self.dir / f"video-{seed}" / f"frame-{t:05d}.npy"

    def label_path(self, seed: int, t: int) -> Path:
        return self.dir / f"video-{seed}" / f"label-{t:05d}.npy"

    def flow_paths(self, seed: int, t1: int, t2: int) -> tuple[Path, Path]:
        folder = self.dir / f"video-{seed}"
        return folder / f"flow-{t1:05d}-{t2:05d}.npy", folder / f"valid-{t1:05d}-{t2:05d}.npy"

    def world(self, seed: int) -> ShapeWorld:
        return self.world_class(seed, self.height, self.width, **self.video_kwargs)

    # -- writing --------------------------------------------------------------------------------
    def ensure(self, seeds: Sequence[int], frames: int, gap: int | None = None, pairs: int = 0) -> None:
        """Render what is missing: frames ``0 .. frames-1`` of every video and, with ``gap``, the flow
        t → t + gap and t + gap → t for t < ``pairs``; check what was there against the world."""
        with one_thread():
            self._ensure(seeds, frames, gap, pairs)

    def _ensure(self, seeds: Sequence[int], frames: int, gap: int | None, pairs: int) -> None:
        todo: list[tuple[int, list[int], list[tuple[int, int]]]] = []
        for seed in seeds:
            times = [t for t in range(frames)
                     if not (self.frame_path(seed, t).exists() and self.label_path(seed, t).exists())]
            flows = [(a, b) for t in range(pairs if gap else 0) for a, b in ((t, t + gap), (t + gap, t))
                     if not all(p.exists() for p in self.flow_paths(seed, a, b))]
            if len(times) < frames or len(flows) < 2 * pairs * bool(gap):
                self._spot_check(seed)
            if times or flows:
                todo.append((seed, times, flows))
        if not todo:
            return
        n_frames, n_flows = sum(len(t) for _, t, _ in todo), sum(len(f) for _, _, f in todo)
        log.info("clip cache %s: rendering %d frame(s) and %d flow(s) of %d video(s), once", self.dir, n_frames,
                 n_flows, len(todo))
        start = time.perf_counter()
        for seed, times, flows in todo:
            video = self.world(seed)
            for t in times:
                frame = video.render(t)
                _save(to_uint8(frame["image"]).numpy(), self.frame_path(seed, t))
                _save(frame["semantic"].to(torch.uint8).numpy(), self.label_path(seed, t))  # the oracle's labels
            for a, b in flows:
                out = video.flow(a, b)
                flow_path, valid_path = self.flow_paths(seed, a, b)
                _save(out["flow"].numpy(), flow_path)
                _save(out["valid"].numpy(), valid_path)
        log.info("clip cache %s: rendered in %.0f s", self.dir, time.perf_counter() - start)

    def _spot_check(self, seed: int) -> None:
        """Re-render the middle row of the video's first cached frame and flow and compare: clips of
        an older world's code are refused, not served."""
        video, row = self.world(seed), (self.height // 2, 0, 1, self.width)
        cached = CachedVideo(self, seed)
        frame = next((t for t in range(64) if self.frame_path(seed, t).exists()), None)
        stale = frame is not None and not torch.equal(cached.render(frame, row)["image"],
                                                      eight_bit(video.render(frame, row)["image"]))
        folder = self.dir / f"video-{seed}"
        first_flow = next(iter(sorted(folder.glob("flow-*.npy"))), None)
        if first_flow is not None and not stale:
            a, b = (int(x) for x in first_flow.stem.split("-")[1:])
            ours, theirs = cached.flow(a, b, row), video.flow(a, b, row)
            stale = not all(torch.equal(ours[k], theirs[k]) for k in ("flow", "valid"))
        if stale:
            raise ValueError(f"clip cache {folder} differs from what world {self.header['world']!r} renders now (its "
                             "code changed since the clips were rendered); delete the folder to render them again")

    # -- reading --------------------------------------------------------------------------------
    def load(self, path: Path) -> np.ndarray:
        """A cached array, memory-mapped; a missing or broken file is one line naming it."""
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"clip cache file {path} does not exist: the dataset draws a frame or pair its "
                                    "cache was not rendered for; delete the folder to render it again") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"clip cache file {path} cannot be read ({exc}); delete {path.parent} to render that "
                             "video again") from None


class CachedVideo:
    """A video read from a :class:`ClipCache`: ``render(t)['image']`` and ``flow(t1, t2)`` as the world's
    own (8-bit frames), for the frames and pairs the cache holds; a ``window`` crops them."""

    def __init__(self, cache: ClipCache, seed: int) -> None:
        self.cache, self.seed = cache, seed
        self.height, self.width = cache.height, cache.width

    @staticmethod
    def _crop(array: np.ndarray, window: Window | None) -> torch.Tensor:
        if window is not None:
            y0, x0, h, w = window
            array = array[..., y0:y0 + h, x0:x0 + w]
        return torch.from_numpy(np.array(array))

    def render(self, t: int, window: Window | None = None) -> dict[str, torch.Tensor]:
        image = from_uint8(self._crop(self.cache.load(self.cache.frame_path(self.seed, int(t))), window))
        label = self._crop(self.cache.load(self.cache.label_path(self.seed, int(t))), window).long()
        return {"image": image, "semantic": label}

    def flow(self, t1: int, t2: int, window: Window | None = None) -> dict[str, torch.Tensor]:
        flow_path, valid_path = self.cache.flow_paths(self.seed, int(t1), int(t2))
        return {"flow": self._crop(self.cache.load(flow_path), window),
                "valid": self._crop(self.cache.load(valid_path), window)}


__all__ = ["CachedVideo", "ClipCache", "eight_bit", "from_uint8", "to_uint8"]
