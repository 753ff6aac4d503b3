"""Frames from disk (BDD100K frame dumps, UrbanCity-style folders) as BYOL views.

Bad files are skipped with a warning and counted; past ``max_bad_fraction`` the run stops with a
report, so a broken dataset fails loudly instead of silently training on a few good images.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..registry import DATASETS
from .augment import BYOLViews
from .datasets import SeededDataset

log = logging.getLogger("flowssl")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


class BadDataError(RuntimeError):
    """Too many unreadable inputs."""


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; set data.root in the config "
                                "(or --cfg-options data.root=/path/to/frames)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


# The largest image any flowssl reader decodes: PIL's DecompressionBombError bound (2 × its
# MAX_IMAGE_PIXELS), which detectron2's reader (PIL) enforces too. A corrupt header claiming
# 60000×60000 would otherwise make OpenCV raise (or allocate gigabytes) instead of counting one bad file.
MAX_IMAGE_PIXELS = 178_956_970
JPEG_SOI, JPEG_SOS, JPEG_EOI = b"\xff\xd8\xff", b"\xff\xda", b"\xff\xd9"
PNG_SIGNATURE, PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"  # IEND: type + its fixed CRC


class UnreadableImageError(ValueError):
    """An image that cannot be used: unreadable, truncated, corrupt, or claiming an absurd size.
    ``reason`` is the short why (without the path) for bad-file counters."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"image {path} cannot be used: {reason}")
        self.path, self.reason = Path(path), reason


def truncation_problem(data: bytes) -> str | None:
    """Why an encoded JPEG or PNG is cut short, or None.

    OpenCV decodes a cut-off JPEG with the missing rows grey and only prints a warning, so the end
    marker is checked on the bytes: a JPEG's EOI must follow its last scan (SOS) — entropy-coded data
    stuffs every 0xFF, so neither marker occurs inside a scan, and an EXIF thumbnail's own EOI lies
    before the main scan — and a PNG's IEND chunk must follow its last IDAT."""
    if data.startswith(JPEG_SOI):
        sos = data.rfind(JPEG_SOS)
        if sos < 0 or data.rfind(JPEG_EOI) < sos:
            return "truncated JPEG (no end-of-image marker after the last scan)"
    elif data.startswith(PNG_SIGNATURE):
        iend = data.rfind(PNG_IEND)
        if iend < 0 or iend < data.rfind(b"IDAT"):
            return "truncated PNG (no IEND chunk after the image data)"
    return None


def header_size(source: str | Path | io.BytesIO, path: str | Path) -> tuple[int, int] | None:
    """(height, width) from the image header only (PIL, nothing decoded), or None when PIL does not
    recognise the format (other errors of ``Image.open`` propagate). Raises
    :class:`UnreadableImageError` naming ``path`` when the header claims more than
    :data:`MAX_IMAGE_PIXELS` pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        claimed = f"{int(m[1]):,} pixels" if m else "more pixels than PIL allows"
        raise UnreadableImageError(path, f"its header claims {claimed}, over the {MAX_IMAGE_PIXELS:,}-pixel limit "
                                         "(a corrupt header or a decompression bomb)") from None
    except UnidentifiedImageError:
        return None
    if width * height > MAX_IMAGE_PIXELS:
        raise UnreadableImageError(path, f"its header claims {width}×{height} pixels, over the "
                                         f"{MAX_IMAGE_PIXELS:,}-pixel limit (a corrupt header or a decompression bomb)")
    return height, width


def load_rgb(path: str | Path) -> torch.Tensor:
    """[3,H,W] float RGB in [0,1]; raises :class:`UnreadableImageError` naming the file and why.

    Checked before decoding: the end marker (a truncated JPEG is refused, not trained on with grey
    fill) and the header's size (a header claiming 60000×60000 is refused before any allocation)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableImageError(path, exc.strerror or str(exc)) from None
    problem = truncation_problem(data)
    if problem:
        raise UnreadableImageError(path, problem)
    try:
        header_size(io.BytesIO(data), path)
    except UnreadableImageError:
        raise
    except Exception:  # a header PIL cannot parse: OpenCV's decoder decides below
        pass
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. a size OpenCV refuses that PIL could not parse
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise UnreadableImageError(path, f"OpenCV cannot decode it ({lines[-1] if lines else 'cv2.error'})") from None
    if img is None:
        raise UnreadableImageError(path, "unreadable file")
    return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1])).permute(2, 0, 1).float() / 255


def try_read_rgb(path: Path) -> tuple[torch.Tensor | None, str]:
    """(image, "") or (None, why it cannot be used) — for the readers that skip and count bad files."""
    try:
        return load_rgb(path), ""
    except UnreadableImageError as exc:
        return None, exc.reason


def read_rgb(path: Path) -> torch.Tensor | None:
    """[3,H,W] float RGB in [0,1], or None when the file cannot be used (why: :func:`load_rgb`)."""
    return try_read_rgb(path)[0]


class BadFileCounter:
    """Counts unreadable files per worker and raises past a fraction of the reads."""

    def __init__(self, max_bad_fraction: float) -> None:
        self.max_bad_fraction, self.reads, self.bad = max_bad_fraction, 0, 0

    def record(self, path: Path, ok: bool, reason: str = "unreadable file") -> None:
        self.reads += 1
        if ok:
            return
        self.bad += 1
        log.warning("skipping %s: %s (%d bad of %d reads)", path, reason, self.bad, self.reads)
        if self.reads >= 20 and self.bad / self.reads > self.max_bad_fraction:
            raise BadDataError(f"{self.bad} of {self.reads} files read were bad (last: {path}: {reason}), "
                               f"over data.max_bad_fraction={self.max_bad_fraction}; fix or remove those files, "
                               "or raise data.max_bad_fraction")


@DATASETS.register_module()
class ImageFolderViews(SeededDataset):
    """Every image under ``root`` treated like an ImageNet image (FlowE's plain "BYOL" row)."""

    def __init__(self, root: str, seed: int = 0, crop_size: tuple[int, int] = (512, 1024),
                 resize_to: tuple[int, int] | None = (1080, 1920), crop_scale: tuple[float, float] = (0.08, 1.0),
                 max_bad_fraction: float = 0.01) -> None:
        super().__init__(seed)
        self.files = list_images(root)
        self.resize_to = tuple(resize_to) if resize_to else None
        self.views = BYOLViews(tuple(crop_size), tuple(crop_scale))
        self.bad = BadFileCounter(max_bad_fraction)

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        for _ in range(100):
            path = self.files[int(rng.integers(len(self.files)))]
            img, why = try_read_rgb(path)
            self.bad.record(path, img is not None, why)
            if img is not None:
                break
        else:
            raise BadDataError(f"100 consecutive unreadable files under {path.parent}")
        if self.resize_to and tuple(img.shape[1:]) != self.resize_to:
            img = F.interpolate(img[None], self.resize_to, mode="bilinear", align_corners=False)[0]
        return self.views(img)
