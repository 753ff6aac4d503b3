"""The project's first synthetic world, kept for comparison: class = colour.

Six large textured shapes over a smooth grey background under a camera pan/zoom; every class has its
own fixed colour and stripe texture (:data:`STYLES`). A per-pixel colour classifier therefore reads
the class off a single pixel, and a 1×1 readout of random features separates the classes (the tiny
benchmark gave Rand Init 51.5 mIoU on it) — which is why :class:`~pretrain.data.synthetic.MovingShapesVideo`
replaced it. Its smooth textures still make it the sharpest input for tests of warping geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .world import CLASSES, ShapeWorld


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


class ColouredShapesVideo(ShapeWorld):
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

    def camera(self, t: float) -> np.ndarray:
        z = math.exp(self._cam_zoom * t)
        c = np.array([(self.width - 1) / 2, (self.height - 1) / 2])
        m = np.eye(3)
        m[:2, :2] *= z
        m[:2, 2] = c - z * c + self._cam_vel * t
        return m

    def pose(self, k: int, t: float) -> np.ndarray:
        s = self._radius[k] * math.exp(self._growth[k] * t)
        a = self._angle[k] + self._spin[k] * t
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        m = np.eye(3)
        m[:2, :2] = rot @ np.diag([s * self._aspect[k], s / self._aspect[k]])
        m[:2, 2] = self._centre[k] + self._vel[k] * t
        return m

    def _paint_background(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave = np.sin(2 * np.pi * self._bg_freq * (w.numpy() @ self._bg_dir.T) + self._bg_phase)  # [N, n]
        return torch.from_numpy(self._bg_base + wave @ self._bg_colour), torch.zeros(len(w), dtype=torch.long)

    def _paint_object(self, k: int, u: torch.Tensor) -> torch.Tensor:
        st = STYLES[int(self.classes[k])]
        d = u[:, 0] * math.cos(st.stripe_angle) + u[:, 1] * math.sin(st.stripe_angle)
        shade = 0.72 + 0.28 * torch.sin(2 * math.pi * st.stripe_periods * d + self._phase[k])
        return shade[:, None] * torch.tensor(st.colour, dtype=u.dtype)
