"""Datasets the trainer samples from, and the sampler that makes every sample reproducible.

Each sample is a pure function of (seed, global sample number): the number picks the frame and
seeds the augmentation. Hence a DDP run and a single-process run with the same global batch see the
same samples, and a resumed run continues with exactly the samples it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..registry import DATASETS
from .augment import BYOLViews
from .clip_cache import CachedVideo, ClipCache, eight_bit
from .synthetic import ShapeWorld, video_seed, world_class


def sample_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class IterationBatchSampler(Sampler[list[int]]):
    """Yields, for iterations ``start..max_iters`` and each accumulation micro-step, this rank's
    slice of the global sample numbers ``n = ((it·accum + m)·world + rank)·batch + b``."""

    def __init__(self, start_iter: int, max_iters: int, batch_size: int, accum_steps: int = 1,
                 rank: int = 0, world_size: int = 1) -> None:
        self.start, self.stop = start_iter, max_iters
        self.batch, self.accum, self.rank, self.world = batch_size, accum_steps, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start, self.stop):
            for m in range(self.accum):
                base = ((it * self.accum + m) * self.world + self.rank) * self.batch
                yield list(range(base, base + self.batch))

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum


class SeededDataset(Dataset):
    """Base: ``__getitem__(n)`` runs :meth:`sample` under a torch RNG seeded by (seed, n)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __len__(self) -> int:  # samples are numbered, not enumerated
        return 2**62

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = sample_seed(self.seed, index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            return self.sample(np.random.default_rng(s))

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@DATASETS.register_module()
class SyntheticFrames(SeededDataset):
    """Single frames of the synthetic video, as two BYOL views (the FlowE "BYOL" baseline).
    ``world`` picks the world (:func:`~pretrain.data.synthetic.world_class`). Frames are 8-bit;
    ``clip_cache=<folder>`` renders them once (the frames SyntheticPairs' cache shares), as there. With
    ``labels=True`` a sample is one view (``image``) and the semantic ``label`` map of that view, cropped,
    resized and flipped like it (nearest) — what the supervised oracle trains on (rendered or cached:
    the cache holds them too)."""

    def __init__(self, seed: int = 0, num_videos: int = 64, num_frames: int = 32, height: int = 128,
                 width: int = 256, crop_size: tuple[int, int] = (64, 128),
                 crop_scale: tuple[float, float] = (0.08, 1.0), video: dict | None = None,
                 world: str = "crowded", labels: bool = False, clip_cache: str | None = None) -> None:
        super().__init__(seed)
        self.labels = labels
        self.num_videos, self.num_frames = num_videos, num_frames
        self.height, self.width, self.video_kwargs = height, width, dict(video or {})
        self.world_class = world_class(world)
        self.views = BYOLViews(tuple(crop_size), tuple(crop_scale))
        self.clips = None
        if clip_cache is not None:
            self.clips = ClipCache(clip_cache, world, height, width, self.video_kwargs)
            self.clips.ensure([video_seed(seed, "pretrain", i) for i in range(num_videos)], num_frames)

    @lru_cache(maxsize=256)  # noqa: B019 - videos are small parameter sets, cached per worker
    def video(self, index: int) -> ShapeWorld | CachedVideo:
        seed = video_seed(self.seed, "pretrain", index)
        if self.clips is not None:
            return CachedVideo(self.clips, seed)
        return self.world_class(seed, self.height, self.width, **self.video_kwargs)

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        v, t = int(rng.integers(self.num_videos)), int(rng.integers(self.num_frames))
        frame = self.video(v).render(t)
        if self.labels:
            return self.views.labelled(eight_bit(frame["image"]), frame["semantic"])
        return self.views(eight_bit(frame["image"]))
