"""The embedded synthetic video: a crowded street of moving shapes, with exact flow and labels.

Why procedural: the project must pretrain, read out and be tested offline with no data files. Every
quantity is analytic, so the flow is *exact* (not estimated) and tests can demand ~zero error.

Why this world (:class:`MovingShapesVideo`). The papers claim something about driving video: in crowded
scenes whose small foreground objects cover few pixels, an image-level objective (BYOL) learns poor
dense features, while flow, which groups the pixels that move together, teaches the dense structure
(FlowE Table 1, BDD100K: Rand Init 9.8, BYOL 11.3, FlowE 37.6 mIoU). The first world of this project
gave every class its own colour and stripe texture, so a 1×1 readout of *random* features separated
the classes by colour (51.5 mIoU) and the benchmark could not test the claim. Its statistics are
now taken from driving scenes (BDD100K, Cityscapes, FlowE's UrbanCity), fixed before any benchmark ran:

* **Class is shape, never appearance.** A car can be any colour, and road, walls and vegetation share
  their colours and textures with objects. Every instance *and* every background region draws its
  appearance (two colours, uniform in hue; a flat, striped, checked or wavy pattern with a period of
  0.1–0.3·H pixels) from one pool, independently of its class: colour and texture carry no class.
  Sizes and motions are drawn alike for all classes too, so the shape (disk, square, triangle, ring,
  cross) is the only thing that tells the five classes apart.
* **Crowded frames.** Cityscapes averages ≈ 19 person and vehicle instances per fine-labelled image
  (7.0 humans, 11.8 vehicles) and FlowE estimates 24 per UrbanCity image; at our 128×256 many of those
  would be under a pixel. ``num_objects = 24`` shapes per video, spread over 1.4 frame widths around
  the view, leave ≈ 18 visible per frame (13–22 over 80 frames; the tested range is 8–30).
* **Background covers most pixels; small objects are many, large ones few.** In Cityscapes the eight
  instance classes together take about a tenth of the labelled pixels (cars ≈ 7 %, people ≈ 1 %), the
  rest is stuff (road, building, vegetation, sky). Here the background is a mosaic of large stuff
  regions (a Voronoi tiling of the world plane, cells ≈ 0.45·H apart) and the objects cover ≈ 13 % of
  a frame (6–24 % over 80 frames; tested: 5–35 % per frame, 10–25 % on average) — a little above
  Cityscapes because five classes share it at 128×256, where at 10 % each class keeps ≈ 650 pixels a
  frame. Apparent size falls with depth and far objects are more numerous (depth parallax
  λ = Z_background/Z ∈ [1, 3] with p(λ) ∝ λ⁻², radius = λ · (0.025–0.075)·H log-uniform): many
  instances are small — ≈ 43 % cover under 0.3 % of the frame (COCO's "small", 32² px on a 640×480
  image; tested: at least 30 %) but hold only ≈ 10 % of the foreground pixels; the few near ones hold
  most of them.
* **Occlusion.** Objects stand on the ground: nearer ones appear lower (centre ≈ horizon + (0.1·λ −
  0.05 ± 0.06)·H) and larger, and are drawn in front; far ones crowd near the horizon. About half of
  the visible objects are partly hidden by nearer ones (tested: at least 20 %), as in traffic.
* **Ego-motion plus independent motion.** One frame is 0.1 s (UrbanCity's 10 fps). The camera drives
  forward — a zoom about the focus of expansion on the horizon, at a rate ∝ 1/depth (parallax: up to
  0.8 %/frame for the background, λ times that for an object) — and turns (yaw: a horizontal pan up to
  ``camera_speed`` px/frame at H = 128, with a smaller pitch jitter). 70 % of the objects also move on
  their own (mostly horizontal translation up to λ·``object_speed`` px/frame, slow spin and
  approach); 30 % are parked and move only with the ego-motion at their depth. Flow so carries both
  the camera and the objects, and a parked far object moves like the background, as it does on a road.
  The scene is laid out at ``REFERENCE_TIME`` (frame 16, the middle of the 0–36 frames the demo
  configs sample), so frames before and after it keep the same statistics.

Geometry (exact flow). The camera maps frame pixels to a world plane (the reference frame's pixels):
``E(t, λ)`` = pan · zoom about the focus of expansion by exp(λ·ζ·(t − t_ref)); ``camera(t) = E(t, 1)⁻¹``.
Object k is a shape in canonical coordinates u ∈ [-1, 1]² placed by ``pose(k, t) = E(t, λ_k) ∘ O_k(t)``,
its own affine motion O_k (translation, rotation, anisotropic scale) composed with the ego-motion at its
depth; objects are drawn far to near (higher k in front). Textures are painted in the surface's own
coordinates (canonical for objects, world plane for the background), so a surface point keeps its
colour over time.

Pixel coordinates: (x, y) with integer pixel centres, x ∈ [0, W-1] (``align_corners=True`` in
``grid_sample`` terms). Flow t1→t2 at pixel p is p' − p where p' is where the same surface point
lies at t2 — the backward-warp convention ``I_t1[p] ≈ I_t2[p + flow[p]]`` on visible pixels.

The first world is kept as :class:`pretrain.data.coloured_shapes.ColouredShapesVideo` (``world='coloured'``):
six large shapes, one colour and stripe texture per class, a smooth grey background. World v3
(``world='v3'``, :mod:`.world_v3`) keeps this geometry with large shapes whose class is also carried by
a class-typical layout of parts, so that a stride-8 readout can show what an encoder learnt.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .coloured_shapes import ColouredShapesVideo
from .world import (  # noqa: F401  (re-exported)
    CLASSES,
    EgoMotionWorld,
    ShapeWorld,
    Window,
    WindowedVideo,
    paint,
    pixel_grid,
    sample_appearances,
    video_seed,
)
from .world_v3 import ShapeFamiliesVideo


class MovingShapesVideo(EgoMotionWorld):
    """One crowded street video (a deterministic function of ``seed``), renderable at any real time
    ``t`` (frames; 1 frame = 0.1 s). Lengths scale with ``height``: the same seed at 64×128 is the
    same scene at half the resolution. The statistics and their reasons are in the module docstring.

    ``camera_speed`` (yaw pan) and ``object_speed`` are px/frame at H = 128; ``zoom_rate`` is the
    largest forward-motion zoom of the background per frame; ``rotation_speed`` rad/frame.
    """

    PARKED = 0.3            # fraction of objects without their own motion
    PARALLAX = (1.0, 3.0)   # Z_background / Z of the objects
    SIZE = (0.025, 0.075)   # radius / (λ·H), log-uniform
    SPREAD = (-0.2, 1.2)    # object centres, in frame widths
    ASPECT = (0.75, 1.33)   # anisotropic scale of an object's canonical square
    TILT = math.pi          # any orientation
    GROUND = (0.1, -0.05)   # centre ≈ horizon + (0.1·λ − 0.05 ± 0.06)·H
    CELL = 0.45             # background region spacing, in H

    def __init__(self, seed: int, height: int = 128, width: int = 256, num_objects: int = 24,
                 object_speed: float = 1.0, camera_speed: float = 1.2, zoom_rate: float = 0.008,
                 rotation_speed: float = 0.02) -> None:
        g = np.random.default_rng(seed)
        self.seed, self.height, self.width = seed, height, width
        self._draw_scene(g, num_objects, object_speed, camera_speed, zoom_rate, rotation_speed)
        self._object_look = sample_appearances(g, num_objects, height)
        # Background: Voronoi regions of the world plane, each with its own draw from the same pool.
        self._background_look = sample_appearances(g, self._draw_sites(g), height)
        self._texture = self._texture_frames()

    # -- painting -----------------------------------------------------------------------------
    def _paint_background(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(w) == 0:
            return torch.zeros(0, 3, dtype=w.dtype), torch.zeros(0, dtype=torch.long)
        cell = torch.cdist(w, self._sites).argmin(1)
        return paint(self._background_look, cell, w), cell

    def _paint_object(self, k: int, u: torch.Tensor) -> torch.Tensor:
        q = u @ torch.as_tensor(self._texture[k].T, dtype=u.dtype)
        return paint(self._object_look, torch.full((len(u),), k, dtype=torch.long), q)


WORLDS = ("crowded", "coloured", "v3")


def world_class(name: str) -> type[ShapeWorld]:
    """``'crowded'``: :class:`MovingShapesVideo` (v2, the default world); ``'coloured'``: the first world,
    :class:`~pretrain.data.coloured_shapes.ColouredShapesVideo` (class = colour; kept for comparison);
    ``'v3'``: :class:`~pretrain.data.world_v3.ShapeFamiliesVideo` (large shapes with class-typical parts)."""
    if name == "crowded":
        return MovingShapesVideo
    if name == "coloured":
        return ColouredShapesVideo
    if name == "v3":
        return ShapeFamiliesVideo
    raise ValueError(f"unknown synthetic world '{name}'; choose one of {WORLDS}")


def make_video(seed: int, height: int = 128, width: int = 256, world: str = "crowded", **kwargs: Any) -> ShapeWorld:
    return world_class(world)(seed, height, width, **kwargs)


def write_cityscapes_layout(root: str | Path, *, seed: int = 0, videos: dict[str, int] | None = None,
                            frames_per_video: int = 4, frame_step: int = 5, height: int = 128,
                            width: int = 256, world: str = "crowded", **video_kwargs: Any) -> Path:
    """Write the synthetic video as a Cityscapes-layout dataset that mmseg/detectron2 loaders read.

    ``leftImg8bit/{split}/synthetic/synthetic_{video}_{frame}_leftImg8bit.png`` plus
    ``gtFine/.../*_gtFine_labelTrainIds.png``, ``*_gtFine_labelIds.png`` (identical: our ids are
    already train ids) and 16-bit ``*_gtFine_instanceIds.png``. Each split has its own videos
    (:func:`video_seed`), none of them a pretraining video. Written to a temp folder and renamed
    into place, so ``root`` is either complete or absent.
    """
    root = Path(root)
    videos = videos or {"train": 8, "val": 2}
    if root.exists():
        raise FileExistsError(f"{root} already exists; remove it or choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for split, n in videos.items():
            img_dir = tmp / "leftImg8bit" / split / "synthetic"
            gt_dir = tmp / "gtFine" / split / "synthetic"
            img_dir.mkdir(parents=True)
            gt_dir.mkdir(parents=True)
            for v in range(n):
                video = make_video(video_seed(seed, split, v), height, width, world, **video_kwargs)
                for f in range(frames_per_video):
                    t = f * frame_step
                    out = video.render(t)
                    stem = f"synthetic_{v:06d}_{t:06d}"
                    rgb = (out["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                    cv2.imwrite(str(img_dir / f"{stem}_leftImg8bit.png"), rgb[:, :, ::-1])
                    sem = out["semantic"].numpy().astype(np.uint8)
                    cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelTrainIds.png"), sem)
                    cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelIds.png"), sem)
                    cv2.imwrite(str(gt_dir / f"{stem}_gtFine_instanceIds.png"),
                                out["instance"].numpy().astype(np.uint16))
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root
