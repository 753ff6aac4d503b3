"""The embedded synthetic video: procedural "moving shapes" with exact flow and labels.

Why procedural: the project must pretrain, read out and be tested offline with no data files. Every
quantity is analytic, so the flow is *exact* (not estimated) and tests can demand ~zero error:

* the camera maps frame pixels to a world plane with a pan and a zoom (ego-motion);
  the background is a smooth texture painted on that plane;
* each object k is a textured shape in canonical coordinates u ∈ [-1, 1]², placed by its own
  affine pose P_k(t) (translation, rotation, anisotropic scale, all changing linearly in time),
  drawn in a fixed depth order (higher k in front).

Pixel coordinates: (x, y) with integer pixel centres, x ∈ [0, W-1] (``align_corners=True`` in
``grid_sample`` terms). Flow t1→t2 at pixel p is p' − p where p' is where the same surface point
lies at t2 — the backward-warp convention ``I_t1[p] ≈ I_t2[p + flow[p]]`` on visible pixels.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

CLASSES: tuple[str, ...] = ("background", "disk", "square", "triangle", "ring", "cross")
# RGB colours of the label palette (for colormaps and mmseg metainfo).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (90, 90, 90), (220, 60, 60), (60, 170, 60), (60, 90, 220), (220, 190, 40), (170, 60, 200),
)


@dataclass(frozen=True)
class ShapeStyle:
    """Appearance of a class: base colour and a stripe texture in canonical coordinates."""

    colour: tuple[float, float, float]
    stripe_periods: float  # stripe periods across the canonical unit square
    stripe_angle: float    # radians


STYLES: dict[int, ShapeStyle] = {
    1: ShapeStyle((0.85, 0.30, 0.25), 1.2, 0.0),
    2: ShapeStyle((0.25, 0.70, 0.30), 0.8, math.pi / 4),
    3: ShapeStyle((0.25, 0.35, 0.85), 1.0, math.pi / 2),
    4: ShapeStyle((0.85, 0.75, 0.20), 0.6, -math.pi / 4),
    5: ShapeStyle((0.70, 0.30, 0.80), 1.4, math.pi / 3),
}


def _inside(cls: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Membership of canonical points in the class's shape."""
    if cls == 1:
        return u * u + v * v < 1.0
    if cls == 2:
        return torch.maximum(u.abs(), v.abs()) < 0.85
    if cls == 3:
        return (v > -0.75) & (u.abs() * 1.7 + v < 0.95)
    if cls == 4:
        r2 = u * u + v * v
        return (r2 < 1.0) & (r2 > 0.3)
    if cls == 5:
        return ((u.abs() < 0.32) & (v.abs() < 0.95)) | ((v.abs() < 0.32) & (u.abs() < 0.95))
    raise ValueError(f"no shape for class {cls}")


def _apply(m: np.ndarray, pts: torch.Tensor) -> torch.Tensor:
    """Apply a 3×3 affine matrix to [N, 2] points."""
    a = torch.as_tensor(m[:2, :2].T, dtype=pts.dtype)
    b = torch.as_tensor(m[:2, 2], dtype=pts.dtype)
    return pts @ a + b


def pixel_grid(height: int, width: int) -> torch.Tensor:
    """[H*W, 2] (x, y) coordinates of pixel centres, row-major."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                            torch.arange(width, dtype=torch.float64), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


class MovingShapesVideo:
    """One deterministic video (a function of ``seed``), renderable at any real time ``t``."""

    def __init__(self, seed: int, height: int = 128, width: int = 256, num_objects: int = 6,
                 object_speed: float = 1.5, camera_speed: float = 1.0, zoom_rate: float = 0.01,
                 rotation_speed: float = 0.03, object_size: tuple[float, float] = (0.10, 0.20)) -> None:
        g = np.random.default_rng(seed)
        self.seed, self.height, self.width = seed, height, width
        # Background: a smooth world-plane texture (four oriented sinusoids with colour weights).
        n = 4
        self._bg_freq = g.uniform(1 / 40, 1 / 14, n)
        self._bg_dir = np.stack([np.cos(a := g.uniform(0, np.pi, n)), np.sin(a)], 1)
        self._bg_phase = g.uniform(0, 2 * np.pi, n)
        self._bg_colour = g.uniform(-0.12, 0.12, (n, 3))
        self._bg_base = g.uniform(0.35, 0.55, 3)
        # Camera (ego-motion): pan velocity and a zoom about the frame centre.
        self._cam_vel = g.uniform(-camera_speed, camera_speed, 2)
        self._cam_zoom = g.uniform(-zoom_rate, zoom_rate)
        # Objects with independent affine motions.
        self.classes = g.integers(1, len(CLASSES), num_objects)
        self._centre = g.uniform([0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height], (num_objects, 2))
        self._vel = g.uniform(-object_speed, object_speed, (num_objects, 2))
        self._radius = g.uniform(*object_size, num_objects) * height
        self._growth = g.uniform(-0.01, 0.01, num_objects)
        self._angle = g.uniform(-np.pi, np.pi, num_objects)
        self._spin = g.uniform(-rotation_speed, rotation_speed, num_objects)
        self._aspect = g.uniform(0.75, 1.33, num_objects)
        self._phase = g.uniform(0, 2 * np.pi, num_objects)

    @property
    def num_objects(self) -> int:
        return len(self.classes)

    # -- geometry -----------------------------------------------------------------------------
    def camera(self, t: float) -> np.ndarray:
        """3×3 map from frame pixels at time t to world-plane coordinates."""
        z = math.exp(self._cam_zoom * t)
        c = np.array([(self.width - 1) / 2, (self.height - 1) / 2])
        m = np.eye(3)
        m[:2, :2] *= z
        m[:2, 2] = c - z * c + self._cam_vel * t
        return m

    def pose(self, k: int, t: float) -> np.ndarray:
        """3×3 map from object k's canonical coordinates to frame pixels at time t."""
        s = self._radius[k] * math.exp(self._growth[k] * t)
        a = self._angle[k] + self._spin[k] * t
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        m = np.eye(3)
        m[:2, :2] = rot @ np.diag([s * self._aspect[k], s / self._aspect[k]])
        m[:2, 2] = self._centre[k] + self._vel[k] * t
        return m

    def surface_at(self, pts: torch.Tensor, t: float) -> torch.Tensor:
        """Front-most surface at continuous points: 0 = background, k + 1 = object k."""
        surf = torch.zeros(len(pts), dtype=torch.long)
        for k in range(self.num_objects):
            u = _apply(np.linalg.inv(self.pose(k, t)), pts)
            surf[_inside(int(self.classes[k]), u[:, 0], u[:, 1])] = k + 1
        return surf

    # -- rendering ----------------------------------------------------------------------------
    def render(self, t: float) -> dict[str, torch.Tensor]:
        """Frame at time t: ``image`` [3,H,W] float in [0,1], ``semantic`` and ``instance`` [H,W].

        ``instance`` follows Cityscapes' instanceIds: class·1000 + k on objects, the class id
        (0) on background.
        """
        pts = pixel_grid(self.height, self.width)
        w = _apply(self.camera(t), pts).numpy()
        wave = np.sin(2 * np.pi * self._bg_freq * (w @ self._bg_dir.T) + self._bg_phase)  # [N, n]
        img = torch.from_numpy(self._bg_base + wave @ self._bg_colour)
        surf = torch.zeros(len(pts), dtype=torch.long)
        for k in range(self.num_objects):
            cls = int(self.classes[k])
            u = _apply(np.linalg.inv(self.pose(k, t)), pts)
            m = _inside(cls, u[:, 0], u[:, 1])
            st = STYLES[cls]
            d = u[m, 0] * math.cos(st.stripe_angle) + u[m, 1] * math.sin(st.stripe_angle)
            shade = 0.72 + 0.28 * torch.sin(2 * math.pi * st.stripe_periods * d + self._phase[k])
            img[m] = shade[:, None] * torch.tensor(st.colour, dtype=img.dtype)
            surf[m] = k + 1
        h, w_ = self.height, self.width
        cls_of = torch.as_tensor(np.concatenate([[0], self.classes]), dtype=torch.long)
        semantic = cls_of[surf]
        instance = torch.where(surf > 0, semantic * 1000 + (surf - 1), semantic)
        return {
            "image": img.clamp(0, 1).T.reshape(3, h, w_).float(),
            "semantic": semantic.reshape(h, w_),
            "instance": instance.reshape(h, w_),
            "surface": surf.reshape(h, w_),
        }

    def flow(self, t1: float, t2: float) -> dict[str, torch.Tensor]:
        """Exact flow t1→t2 [2,H,W] (pixels) with ``valid`` = lands inside frame t2 and stays
        visible there, ``occluded`` = hidden at t2 by another surface."""
        pts = pixel_grid(self.height, self.width)
        surf1 = self.surface_at(pts, t1)
        dst = _apply(np.linalg.inv(self.camera(t2)) @ self.camera(t1), pts)
        for k in range(self.num_objects):
            m = surf1 == k + 1
            if m.any():
                dst[m] = _apply(self.pose(k, t2) @ np.linalg.inv(self.pose(k, t1)), pts[m])
        inside = (dst[:, 0] >= 0) & (dst[:, 0] <= self.width - 1) & (dst[:, 1] >= 0) & (dst[:, 1] <= self.height - 1)
        occluded = self.surface_at(dst, t2) != surf1
        h, w = self.height, self.width
        return {
            "flow": (dst - pts).T.reshape(2, h, w).float(),
            "valid": (inside & ~occluded).reshape(h, w),
            "occluded": occluded.reshape(h, w),
        }


def video_seed(seed: int, split: str, index: int) -> int:
    """Seed of video ``index`` of ``split``: different splits never share a video."""
    return int(np.random.SeedSequence([seed, sum(map(ord, split)), index]).generate_state(1)[0])


def write_cityscapes_layout(root: str | Path, *, seed: int = 0, videos: dict[str, int] | None = None,
                            frames_per_video: int = 4, frame_step: int = 5, height: int = 128,
                            width: int = 256, **video_kwargs: float) -> Path:
    """Write the synthetic video as a Cityscapes-layout dataset that mmseg/detectron2 loaders read.

    ``leftImg8bit/{split}/synthetic/synthetic_{video}_{frame}_leftImg8bit.png`` plus
    ``gtFine/.../*_gtFine_labelTrainIds.png``, ``*_gtFine_labelIds.png`` (identical: our ids are
    already train ids) and 16-bit ``*_gtFine_instanceIds.png``. Written to a temp folder and
    renamed into place, so ``root`` is either complete or absent.
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
                video = MovingShapesVideo(video_seed(seed, split, v), height, width, **video_kwargs)
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
