"""The base of every synthetic world: flat surfaces under affine maps, rendered at any real time
with exact flow, and what every world shares (class names, pixel grid, video seeds, windows).

A world subclasses :class:`ShapeWorld` in its own module (:mod:`.synthetic` the crowded default,
:mod:`.coloured_shapes` the first world); :func:`pretrain.data.synthetic.world_class` picks one by name.
Only ever imported by the worlds, never the other way round.
"""

from __future__ import annotations

import numpy as np
import torch

from ..readout import SYNTHETIC_CLASSES as CLASSES  # noqa: F401  label ids 0..5: id k is the shape _inside(k) draws

Window = tuple[int, int, int, int]  # (y0, x0, h, w): a crop of the frame, in full-frame pixels


def _inside(cls: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Membership of canonical points in the class's shape (all inside [-1, 1]²)."""
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


def pixel_grid(height: int, width: int, y0: int = 0, x0: int = 0) -> torch.Tensor:
    """[H*W, 2] (x, y) coordinates of pixel centres, row-major, offset by (x0, y0)."""
    ys, xs = torch.meshgrid(torch.arange(y0, y0 + height, dtype=torch.float64),
                            torch.arange(x0, x0 + width, dtype=torch.float64), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


class ShapeWorld:
    """Rendering and exact flow for any world of flat surfaces under affine maps.

    A subclass sets ``seed``, ``height``, ``width``, ``classes`` (class id per object) and defines
    :meth:`camera` (frame → world plane), :meth:`pose` (object canonical → frame) and the two painters.
    """

    seed: int
    height: int
    width: int
    classes: np.ndarray

    @property
    def num_objects(self) -> int:
        return len(self.classes)

    def camera(self, t: float) -> np.ndarray:
        """3×3 map from frame pixels at time t to world-plane coordinates."""
        raise NotImplementedError

    def pose(self, k: int, t: float) -> np.ndarray:
        """3×3 map from object k's canonical coordinates to frame pixels at time t."""
        raise NotImplementedError

    def _paint_background(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB [N, 3] and region id [N] of world-plane points."""
        raise NotImplementedError

    def _paint_object(self, k: int, u: torch.Tensor) -> torch.Tensor:
        """RGB [N, 3] of object k at canonical points."""
        raise NotImplementedError

    # -- geometry -----------------------------------------------------------------------------
    def _candidates(self, k: int, t: float, pts: torch.Tensor) -> torch.Tensor:
        """Indices of the points inside the bounding box of object k's canonical square: the shape
        test then runs on those only (a crowded frame would otherwise cost objects × pixels)."""
        corners = _apply(self.pose(k, t), torch.tensor([[-1.0, -1.0], [1, -1], [1, 1], [-1, 1]], dtype=pts.dtype))
        lo, hi = corners.min(0).values, corners.max(0).values
        sel = (pts[:, 0] >= lo[0]) & (pts[:, 0] <= hi[0]) & (pts[:, 1] >= lo[1]) & (pts[:, 1] <= hi[1])
        return sel.nonzero()[:, 0]

    def surface_coordinates(self, pts: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Front-most surface at continuous points (0 = background, k + 1 = object k) and the point's
        coordinates *on* that surface (canonical for objects, world plane for the background). A
        physical point keeps both at every time it is visible — which is what makes the flow exact."""
        surf = torch.zeros(len(pts), dtype=torch.long)
        coords = torch.zeros(len(pts), 2, dtype=pts.dtype)
        for k in range(self.num_objects):  # back to front: later objects overwrite
            idx = self._candidates(k, t, pts)
            if len(idx) == 0:
                continue
            u = _apply(np.linalg.inv(self.pose(k, t)), pts[idx])
            m = _inside(int(self.classes[k]), u[:, 0], u[:, 1])
            surf[idx[m]] = k + 1
            coords[idx[m]] = u[m]
        bg = surf == 0
        coords[bg] = _apply(self.camera(t), pts[bg])
        return surf, coords

    def surface_at(self, pts: torch.Tensor, t: float) -> torch.Tensor:
        """Front-most surface at continuous points: 0 = background, k + 1 = object k."""
        return self.surface_coordinates(pts, t)[0]

    def _grid(self, window: Window | None) -> tuple[torch.Tensor, int, int]:
        y0, x0, h, w = window if window is not None else (0, 0, self.height, self.width)
        return pixel_grid(h, w, y0, x0), h, w

    # -- rendering ----------------------------------------------------------------------------
    def render(self, t: float, window: Window | None = None) -> dict[str, torch.Tensor]:
        """Frame at time t (or the ``window`` (y0, x0, h, w) of it): ``image`` [3,H,W] float in [0,1],
        ``semantic``, ``instance``, ``surface`` and ``region`` [H,W].

        ``instance`` follows Cityscapes' instanceIds: class·1000 + k on objects, the class id (0) on
        background. ``region`` numbers every uniformly painted patch (objects 1..n, then background
        regions), so tests can find the edges where bilinear interpolation mixes two surfaces.
        """
        pts, h, w = self._grid(window)
        surf, coords = self.surface_coordinates(pts, t)
        img = torch.zeros(len(pts), 3, dtype=torch.float64)
        region = surf.clone()
        bg = surf == 0
        img[bg], bg_region = self._paint_background(coords[bg])
        region[bg] = self.num_objects + 1 + bg_region
        for k in range(self.num_objects):
            m = surf == k + 1
            if m.any():
                img[m] = self._paint_object(k, coords[m])
        cls_of = torch.as_tensor(np.concatenate([[0], self.classes]), dtype=torch.long)
        semantic = cls_of[surf]
        instance = torch.where(surf > 0, semantic * 1000 + (surf - 1), semantic)
        return {
            "image": img.clamp(0, 1).T.reshape(3, h, w).float(),
            "semantic": semantic.reshape(h, w),
            "instance": instance.reshape(h, w),
            "surface": surf.reshape(h, w),
            "region": region.reshape(h, w),
        }

    def flow(self, t1: float, t2: float, window: Window | None = None) -> dict[str, torch.Tensor]:
        """Exact flow t1→t2 [2,H,W] (pixels) with ``valid`` = lands inside frame t2 and stays visible
        there, ``occluded`` = hidden at t2 by another surface. A ``window`` gives the same values as
        cropping the whole frame's flow (inside still means inside the whole frame)."""
        pts, h, w = self._grid(window)
        surf1 = self.surface_at(pts, t1)
        dst = _apply(np.linalg.inv(self.camera(t2)) @ self.camera(t1), pts)
        for k in range(self.num_objects):
            m = surf1 == k + 1
            if m.any():
                dst[m] = _apply(self.pose(k, t2) @ np.linalg.inv(self.pose(k, t1)), pts[m])
        inside = ((dst[:, 0] >= 0) & (dst[:, 0] <= self.width - 1) & (dst[:, 1] >= 0)
                  & (dst[:, 1] <= self.height - 1))
        occluded = self.surface_at(dst, t2) != surf1
        return {
            "flow": (dst - pts).T.reshape(2, h, w).float(),
            "valid": (inside & ~occluded).reshape(h, w),
            "occluded": occluded.reshape(h, w),
        }


# -- the shared appearance pool ---------------------------------------------------------------


class WindowedVideo:
    """A video seen through a fixed ``window`` (y0, x0, h, w): ``render``/``flow`` give the crop of the
    whole frame's, at the cost of the crop (what a pretraining crop needs, ~4× cheaper at 64×128 of
    128×256). The ground-truth flow source calls ``flow`` on it like on the video."""

    def __init__(self, video: ShapeWorld, window: Window) -> None:
        self.video, self.window, self.seed = video, window, video.seed

    def render(self, t: float) -> dict[str, torch.Tensor]:
        return self.video.render(t, self.window)

    def flow(self, t1: float, t2: float) -> dict[str, torch.Tensor]:
        return self.video.flow(t1, t2, self.window)



def video_seed(seed: int, split: str, index: int) -> int:
    """Seed of video ``index`` of ``split``: different (seed, split, index) never share a video —
    readout train/val and pretraining (``'pretrain'``) videos are disjoint by construction."""
    return int(np.random.SeedSequence([seed, index, *split.encode()]).generate_state(1)[0])

