"""The base of every synthetic world: flat surfaces under affine maps, rendered at any real time
with exact flow, and what every world shares (class names, pixel grid, video seeds, windows).

A world subclasses :class:`ShapeWorld` in its own module (:mod:`.synthetic` the crowded default,
:mod:`.coloured_shapes` the first world, :mod:`.world_v3` large shapes with class-typical parts; the two
street worlds share :class:`EgoMotionWorld`'s geometry and the appearance pool here);
:func:`pretrain.data.synthetic.world_class` picks one by name.
Only ever imported by the worlds, never the other way round.
"""

from __future__ import annotations

import colorsys
import math

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


class EgoMotionWorld(ShapeWorld):
    """The street worlds' geometry (v2 :class:`~pretrain.data.synthetic.MovingShapesVideo`, v3
    :class:`~pretrain.data.world_v3.ShapeFamiliesVideo`): a camera driving forward and turning, and
    objects at depth parallax λ_k with their own affine motion (the v2 module docstring has the why).

    :meth:`_draw_scene` draws the focus of expansion ``_foe``, the zoom rate ``_zoom``, the pan ``_pan``
    (px/frame) and per object ``parallax``, ``classes``, ``_radius``, ``_aspect``, ``_angle``, ``_centre``
    (reference-frame pixels), ``moving``, ``_vel``, ``_spin``, ``_growth`` from the class's statistics;
    :meth:`_draw_sites` the background's Voronoi sites. The scene is laid out at :attr:`REFERENCE_TIME`.
    """

    REFERENCE_TIME = 16.0
    # a world's statistics
    PARKED: float                   # fraction of objects without their own motion
    PARALLAX: tuple[float, float]   # Z_background / Z of the objects, p(λ) ∝ λ⁻²
    SIZE: tuple[float, float]       # radius / (λ·H), log-uniform
    SPREAD: tuple[float, float]     # object centres, in frame widths
    ASPECT: tuple[float, float]     # anisotropic scale of an object's canonical square
    TILT: float                     # orientation uniform in ±TILT (rad)
    GROUND: tuple[float, float]     # centre below the horizon: (GROUND[0]·λ + GROUND[1] ± 0.06)·H
    CELL: float                     # background region spacing, in H

    def _draw_scene(self, g: np.random.Generator, n: int, object_speed: float, camera_speed: float,
                    zoom_rate: float, rotation_speed: float) -> None:
        """The camera and ``n`` objects sorted far to near (nearer ones are drawn in front), drawn from
        ``g`` in a fixed order. Speeds are px/frame at H = 128."""
        height, width = self.height, self.width
        unit = height / 128  # px at this resolution per px at H = 128
        # Ego-motion: focus of expansion on the horizon, forward zoom, yaw pan and pitch jitter.
        self._foe = np.array([width * (0.5 + g.uniform(-0.1, 0.1)), height * (0.42 + g.uniform(-0.04, 0.04))])
        self._zoom = g.uniform(0, zoom_rate)
        self._pan = np.array([g.uniform(-camera_speed, camera_speed), g.uniform(-0.25, 0.25) * camera_speed]) * unit
        lo, hi = self.PARALLAX
        lam = np.sort(1 / (1 / lo - g.uniform(0, 1, n) * (1 / lo - 1 / hi)))  # p(λ) ∝ λ⁻² on [lo, hi]
        self.parallax = lam
        self.classes = g.integers(1, len(CLASSES), n)
        self._radius = np.exp(g.uniform(*np.log(self.SIZE), n)) * height * lam
        self._aspect = g.uniform(*self.ASPECT, n)
        self._angle = g.uniform(-self.TILT, self.TILT, n)
        slope, offset = self.GROUND
        self._centre = np.stack([g.uniform(*self.SPREAD, n) * width,
                                 self._foe[1] + (slope * lam + offset + g.uniform(-0.06, 0.06, n)) * height], 1)
        moving = g.uniform(0, 1, n) >= self.PARKED
        self.moving = moving
        self._vel = (np.stack([g.uniform(-1, 1, n), g.uniform(-0.15, 0.15, n)], 1) * object_speed * unit
                     * lam[:, None] * moving[:, None])
        self._spin = g.uniform(-rotation_speed, rotation_speed, n) * moving
        self._growth = g.uniform(-0.005, 0.005, n) * moving

    def _draw_sites(self, g: np.random.Generator) -> int:
        """Sites of the background's Voronoi regions (``_sites``, world-plane px, ``CELL``·H apart, jittered)
        over three frames each way; returns how many."""
        step = self.CELL * self.height
        gx = np.arange(-self.width, 2 * self.width + step, step)
        gy = np.arange(-self.height, 2 * self.height + step, step)
        sites = np.stack(np.meshgrid(gx, gy, indexing="xy"), -1).reshape(-1, 2)
        self._sites = torch.as_tensor(sites + g.uniform(-0.4, 0.4, sites.shape) * step)
        return len(sites)

    def _texture_frames(self) -> list[np.ndarray]:
        """Texture coordinates of each object: its canonical square in reference-frame pixels."""
        return [self._own(k, self.REFERENCE_TIME)[:2, :2] for k in range(self.num_objects)]

    def _ego(self, t: float, parallax: float) -> np.ndarray:
        """E(t, λ): reference-frame pixels of a point at depth parallax λ → frame pixels at t."""
        dt = t - self.REFERENCE_TIME
        z = math.exp(parallax * self._zoom * dt)
        m = np.eye(3)
        m[:2, :2] *= z
        m[:2, 2] = self._foe - z * self._foe + self._pan * dt
        return m

    def _own(self, k: int, t: float) -> np.ndarray:
        """O_k(t): object k's own motion, canonical → reference-frame pixels."""
        dt = t - self.REFERENCE_TIME
        s = self._radius[k] * math.exp(self._growth[k] * dt)
        a = self._angle[k] + self._spin[k] * dt
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        m = np.eye(3)
        m[:2, :2] = rot @ np.diag([s * self._aspect[k], s / self._aspect[k]])
        m[:2, 2] = self._centre[k] + self._vel[k] * dt
        return m

    def camera(self, t: float) -> np.ndarray:
        return np.linalg.inv(self._ego(t, 1.0))

    def pose(self, k: int, t: float) -> np.ndarray:
        return self._ego(t, float(self.parallax[k])) @ self._own(k, t)


# -- the shared appearance pool ---------------------------------------------------------------

PATTERNS = ("flat", "stripes", "checks", "waves")


def sample_appearances(g: np.random.Generator, n: int, height: int,
                       value: tuple[float, float] = (0.25, 0.95)) -> dict[str, torch.Tensor]:
    """``n`` draws from the one appearance pool every object and background region uses: two colours
    (hue uniform, saturation 0.1–0.9, HSV value in ``value``), a pattern from :data:`PATTERNS`, its
    period (0.1–0.3·H px, log-uniform), orientation and phases. Nothing here depends on a class."""
    def colours() -> np.ndarray:
        hsv = g.uniform([0.0, 0.1, value[0]], [1.0, 0.9, value[1]], (n, 3))
        return np.array([colorsys.hsv_to_rgb(*c) for c in hsv]).reshape(n, 3)

    a, b = colours(), colours()
    out = {
        "a": a, "b": b, "kind": g.integers(0, len(PATTERNS), n),
        "period": np.exp(g.uniform(math.log(0.1 * height), math.log(0.3 * height), n)),
        "angle": g.uniform(0, np.pi, n), "phase": g.uniform(0, 2 * np.pi, (n, 2)),
    }
    return {k: torch.as_tensor(v) for k, v in out.items()}


def paint(app: dict[str, torch.Tensor], index: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """RGB [N, 3] of appearance ``index`` [N] at texture coordinates ``q`` [N, 2] (pixels at the
    reference time). Smooth patterns: bilinear warping reproduces them closely, away from edges."""
    th, p, ph = app["angle"][index], app["period"][index], app["phase"][index]
    d1 = (q[:, 0] * torch.cos(th) + q[:, 1] * torch.sin(th)) / p
    d2 = (-q[:, 0] * torch.sin(th) + q[:, 1] * torch.cos(th)) / p
    s1, s2 = torch.sin(2 * math.pi * d1 + ph[:, 0]), torch.sin(2 * math.pi * d2 + ph[:, 1])
    kind = app["kind"][index]
    wave = 0.5 + 0.25 * (s1 + torch.sin(2 * math.pi * (0.45 * d1 + 0.8 * d2) + ph[:, 1]))
    m = torch.where(kind == 0, torch.zeros_like(d1), torch.where(kind == 1, 0.5 + 0.5 * s1,
                    torch.where(kind == 2, 0.5 + 0.5 * s1 * s2, wave)))
    a, b = app["a"][index], app["b"][index]
    return a + (b - a) * m[:, None]


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

