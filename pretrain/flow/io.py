"""Flow files: Middlebury ``.flo`` (OpenCV's reader/writer), KITTI 16-bit PNG, and the compact
16-bit PNG cache (the cross-pixel paper's fixed-point PNG storage, footnote 1).

All readers return ``(flow [2,H,W] float32 torch, valid [H,W] bool)``; errors name the file.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..fileio import atomic_path

UNKNOWN_FLO = 1e9  # Middlebury: |u| or |v| above this means unknown
KITTI_SCALE = 64.0


class FlowFileError(ValueError):
    """A flow file that is missing, corrupt, or holds NaN/Inf."""


def _check_finite(flow: np.ndarray, path: Path) -> None:
    if not np.isfinite(flow).all():
        raise FlowFileError(f"flow file {path} contains NaN or Inf values; regenerate it")


def read_flo(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FlowFileError(f"flow file {path} does not exist")
    with open(path, "rb") as f:
        header = f.read(12)
    if header[:4] != b"PIEH":
        raise FlowFileError(f"{path} is not a Middlebury .flo file (magic {header[:4]!r}, expected b'PIEH')")
    # Check the claimed size against the file before anything is allocated: a corrupt header can
    # claim gigabytes.
    width, height = (int(x) for x in np.frombuffer(header[4:12].ljust(8, b"\0"), "<i4"))
    expected = 12 + 8 * width * height
    if len(header) < 12 or width <= 0 or height <= 0 or expected != path.stat().st_size:
        raise FlowFileError(f".flo file {path} claims {width}×{height} flow, which needs {expected} bytes, but the "
                            f"file has {path.stat().st_size}: the header or the file is corrupt")
    flow = cv2.readOpticalFlow(str(path))
    if flow is None or flow.size == 0:
        raise FlowFileError(f".flo file {path} is truncated or corrupt")
    # before masking: NaN fails "|u| < 1e9" and would pass as Middlebury's "unknown" (which is a
    # finite value above 1e9), hiding a broken flow file as occlusion
    _check_finite(flow, path)
    valid = (np.abs(flow) < UNKNOWN_FLO).all(-1)
    flow = np.where(valid[..., None], flow, 0)
    return torch.from_numpy(flow).permute(2, 0, 1).float(), torch.from_numpy(valid)


def write_flo(path: str | Path, flow: torch.Tensor, valid: torch.Tensor | None = None) -> Path:
    arr = flow.detach().cpu().permute(1, 2, 0).numpy().astype(np.float32).copy()
    _check_finite(arr, Path(path))
    if valid is not None:
        arr[~valid.cpu().numpy()] = 1e10
    with atomic_path(path) as tmp:
        if not cv2.writeOpticalFlow(str(tmp), arr):
            raise OSError(f"could not write {path}")
    return Path(path)


def positive_scale(value: Any) -> bool:
    """A usable fixed-point scale: a real number (not a bool), finite and above zero. A negative one
    would flip every flow vector, zero divides by zero."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value)) and value > 0
    except OverflowError:  # an integer beyond float range
        return False


def _check_scale(scale: float, path: Path) -> None:
    if not positive_scale(scale):
        raise FlowFileError(f"flow PNG {path}: the fixed-point scale must be a positive finite number, got {scale!r}")


def _read_png16(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FlowFileError(f"flow file {path} does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FlowFileError(f"flow PNG {path} cannot be decoded (truncated or corrupt)")
    if img.dtype != np.uint16 or img.ndim != 3 or img.shape[2] != 3:
        raise FlowFileError(f"{path} is not a 3-channel 16-bit flow PNG (got {img.dtype}, shape {img.shape})")
    return img[:, :, ::-1].astype(np.float64)  # OpenCV reads BGR; the format is (u, v, valid) as RGB


def _write_png16(path: Path, flow: torch.Tensor, valid: torch.Tensor | None, scale: float) -> Path:
    arr = flow.detach().cpu().permute(1, 2, 0).numpy().astype(np.float64)
    _check_finite(arr, path)
    v = np.ones(arr.shape[:2]) if valid is None else valid.cpu().numpy().astype(np.float64)
    enc = np.clip(np.round(arr * scale + 2**15), 0, 2**16 - 1)
    img = np.concatenate([enc, v[..., None]], -1).astype(np.uint16)[:, :, ::-1]
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise OSError(f"could not write {path}")
    return path


def read_kitti_flow(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """KITTI flow PNG: u, v = (I − 2¹⁵)/64, valid in the third channel."""
    img = _read_png16(Path(path))
    flow = (img[..., :2] - 2**15) / KITTI_SCALE
    return torch.from_numpy(flow).permute(2, 0, 1).float(), torch.from_numpy(img[..., 2] > 0)


def write_kitti_flow(path: str | Path, flow: torch.Tensor, valid: torch.Tensor | None = None) -> Path:
    return _write_png16(Path(path), flow, valid, KITTI_SCALE)


def read_flow_png(path: str | Path, scale: float = KITTI_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """The compact cache: KITTI's fixed-point layout with a configurable scale (±2¹⁵/scale px range,
    1/scale px precision; 64 → ±512 px at 1/64 px)."""
    _check_scale(scale, Path(path))
    img = _read_png16(Path(path))
    flow = (img[..., :2] - 2**15) / scale
    return torch.from_numpy(flow).permute(2, 0, 1).float(), torch.from_numpy(img[..., 2] > 0)


def write_flow_png(path: str | Path, flow: torch.Tensor, valid: torch.Tensor | None = None,
                   scale: float = KITTI_SCALE) -> Path:
    _check_scale(scale, Path(path))
    limit = (2**15 - 1) / scale
    if flow.abs().max() > limit:
        raise FlowFileError(f"flow for {path} exceeds ±{limit:.0f} px, the range of scale {scale}; use a smaller scale")
    return _write_png16(Path(path), flow, valid, scale)
