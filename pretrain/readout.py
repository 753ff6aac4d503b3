"""Readout contracts that detectron2 and MMSegmentation share, in one place and free of both.

Both adapters (``d2_plugin``, ``mmseg_plugin``) and the apps (``flowssl tables``, ``flowssl bench``)
read these instead of keeping their own copy, so a Mask R-CNN and a DeepLab readout of the same
table cannot drift apart:

* **Limited labels** (FlowE Table 6). For a training set of N images, a fraction f and a seed s, the
  readout trains on ``max(1, round(f·N))`` images (halves round up): the images are ranked by
  ``sha256("<s>:<basename>")`` — the hex digest of the seed, a colon and the image file's *basename*
  (e.g. ``0:aachen_000000_000019_leftImg8bit.png``) — and the first ones are kept; equal keys (one
  file listed twice, as VOC's train + aug lists do) rank by full path, then by position. The
  basename is the one name both frameworks give the same image (detectron2's ``file_name`` and
  mmseg's ``img_path`` differ in their data roots and folders) and it is unique within Cityscapes
  (city in the name), BDD100K (hash names) and VOC (year in the name). So for the same list of
  images, seed and fraction, detectron2 and mmseg train on the same images; the subset does not
  depend on the data root, the listing order, workers or GPUs; and for one seed the 1 % subset lies
  inside the 10 % one. The kept files are written to ``label_subset.txt`` in the work dir: one image
  path per line, after optional ``#`` comment lines (detectron2 writes a header saying how the list
  was drawn; mmseg's file is the bare list).
* **results.json**: one writer (:func:`write_results`: atomic, standard JSON, every NaN/inf metric —
  "not measured" — as ``null``) and one reader (:func:`read_results`, which also accepts the bare
  ``NaN`` that detectron2 readouts wrote before).
* **The arch table**: :data:`ARCH_SPECS` (block type, blocks per stage, widths), read off as
  :data:`ARCH_BLOCKS` and :data:`ARCH_DEPTH` (the depth detectron2's ``RESNETS.DEPTH`` and mmseg's
  ``ResNet(depth=)`` name); :data:`D2_ARCHS`, those detectron2 can build.
* **Pixel statistics** (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`) and the synthetic dataset's
  class names and palette (:data:`SYNTHETIC_CLASSES`, :data:`SYNTHETIC_PALETTE`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import write_text_atomic

# -- encoder architectures -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchSpec:
    """One encoder layout, as every framework builds it: torchvision's ``block`` ('bottleneck' or
    'basic'), ``blocks`` per stage (layer1..layer4) and ``width``, the stem's and layer1's inner width
    (layer i: ``width · 2^(i−1)`` inner channels, × 4 out for a bottleneck) — mmseg's
    ``stem_channels`` = ``base_channels``. torchvision's own ResNets have width 64."""

    block: str
    blocks: tuple[int, int, int, int]
    width: int = 64

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def depth(self) -> int:
        """Weighted layers: the convs of every block (3 per bottleneck, 2 per basic block), the stem
        conv and the classifier — the name detectron2's ``RESNETS.DEPTH`` and mmseg's ``depth`` use."""
        return (3 if self.block == "bottleneck" else 2) * sum(self.blocks) + 2

    @property
    def stage_channels(self) -> dict[str, int]:
        """Output channels of the stem and of layer1..layer4."""
        return {"stem": self.width, **{f"layer{i + 1}": self.width * 2 ** i * self.expansion for i in range(4)}}

    @property
    def out_channels(self) -> int:
        return self.stage_channels["layer4"]


# ``resnet14`` (one bottleneck per stage) is the light variant for tests: ResNet-50's stem, stage layout,
# widths and dilation, so every conversion and readout path is the same. ``resnet10n`` is the narrow CPU
# encoder: one basic block per stage at a quarter of ResNet-18's widths (16, 32, 64, 128 channels, 128
# out); at output stride 8 the demo's pretraining step on 64×128 crops is 10.7× (FlowE) and 14.9× (BYOL)
# faster than ResNet-14's on one core, 1/17 of its FLOPs (benchmarks/pretrain_step.py --compare; README).
# Basic blocks dilate their first 3×3 conv, as mmseg's does.
ARCH_SPECS: dict[str, ArchSpec] = {
    "resnet14": ArchSpec("bottleneck", (1, 1, 1, 1)),
    "resnet50": ArchSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ArchSpec("bottleneck", (3, 4, 23, 3)),
    "resnet10n": ArchSpec("basic", (1, 1, 1, 1), width=16),
}
# blocks per stage and depth per arch, read off the table
ARCH_BLOCKS: dict[str, tuple[int, int, int, int]] = {arch: spec.blocks for arch, spec in ARCH_SPECS.items()}
ARCH_DEPTH: dict[str, int] = {arch: spec.depth for arch, spec in ARCH_SPECS.items()}


# The archs detectron2's ResNet can build: bottlenecks only. Its BasicBlock takes no dilation (the C4
# readout dilates res4/res5 as pretraining did) and its R18/R34 fix 64 channels in res2.
D2_ARCHS: tuple[str, ...] = tuple(arch for arch, spec in ARCH_SPECS.items() if spec.block == "bottleneck")


def d2_arch_error(arch: str) -> str | None:
    """Why detectron2 cannot read out ``arch`` (one line), or None when it can."""
    if arch in D2_ARCHS:
        return None
    if arch in ARCH_SPECS:
        spec = ARCH_SPECS[arch]
        return (f"arch {arch} ({spec.block} blocks, widths {spec.width}-{spec.out_channels}) cannot be built by "
                f"detectron2's ResNet (its BasicBlock has no dilation and its R18/R34 fix 64 channels); read it out "
                f"with MMSegmentation (--to mmseg) or torchvision (--to torchvision)")
    return f"arch {arch!r:.60} is not one of detectron2's {list(D2_ARCHS)}"


def arch_of_blocks(blocks: Sequence[int], block: str | None = None, width: int | None = None) -> str | None:
    """The arch with these blocks per stage (and, where given, this block type and width), or None for
    a layout no readout builds."""
    return next((arch for arch, s in ARCH_SPECS.items() if s.blocks == tuple(blocks)
                 and block in (None, s.block) and width in (None, s.width)), None)


# -- pixel statistics and class names ----------------------------------------------------------------

# torchvision's ImageNet statistics, RGB on the 0-1 scale: what every flowssl encoder is trained with
# (pretrain.data.augment.normalize) and what the readouts must normalise with (detectron2 wants them x255).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# The label ids 0..5 of the synthetic video (pretrain.data.synthetic draws shape k for id k); detectron2's
# instance classes are the shapes, ids 1..5, and mmseg's semantic classes all six.
SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disk", "square", "triangle", "ring", "cross")
# RGB colours of the label palette (for colormaps and mmseg metainfo) — labels only, never rendered.
SYNTHETIC_PALETTE: tuple[tuple[int, int, int], ...] = (
    (90, 90, 90), (220, 60, 60), (60, 170, 60), (60, 90, 220), (220, 190, 40), (170, 60, 200),
)

# -- limited labels ----------------------------------------------------------------------------------

LIST_FILE_NAME = "label_subset.txt"
SUBSET_RULE = "images ranked by sha256('<seed>:<basename>'), the first max(1, round(fraction*N)) kept"


def subset_size(fraction: float, n: int) -> int:
    """``round(fraction · n)`` (halves round up), at least 1: a 1 % subset of 30 images is one image."""
    return max(1, math.floor(fraction * n + 0.5))


def check_fraction(fraction: Any, where: str = "label fraction") -> float:
    """``fraction`` as a float in (0, 1], or a ValueError saying what is allowed."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number in (0, 1] (0.01 for 1 %), got {fraction!r}") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{where} must be in (0, 1] (0.01 for 1 %, 1.0 for all labels), got {fraction!r}")
    return value


def subset_keys(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The names images are ranked by: their basenames, the same in every framework and data root."""
    return [os.path.basename(os.fspath(p)) for p in paths]


def select_subset(paths: Sequence[str | os.PathLike[str]], fraction: Any, seed: int,
                  where: str = "label fraction") -> list[int]:
    """Indices (ascending) of the images kept for ``fraction`` and ``seed`` (the module's rule).

    A pure function of the paths' basenames, ``fraction`` and ``seed``; ``where`` names the option in
    the error for a bad fraction."""
    if not paths:
        raise ValueError("the training set is empty: nothing to take a label fraction of")
    fraction = check_fraction(fraction, where)
    names = [os.fspath(p) for p in paths]
    digests = [hashlib.sha256(f"{seed}:{key}".encode()).hexdigest() for key in subset_keys(names)]
    rank = sorted(range(len(names)), key=lambda i: (digests[i], names[i], i))
    return sorted(rank[:subset_size(fraction, len(names))])


def subset_list_text(files: Sequence[str], total: int, fraction: float, seed: int, source: str) -> str:
    """``label_subset.txt``, the same in both frameworks: two ``#`` lines saying how the list was drawn
    (fraction, seed, kept of total, from which training set; the rule), then one image path per line."""
    header = (f"flowssl label subset: fraction {fraction}, seed {seed}: {len(files)} of {total} training images "
              f"of {source}", f"rule: {SUBSET_RULE}")
    return "".join(f"# {line}\n" for line in header) + "".join(f"{f}\n" for f in files)


def read_subset_list(path: str | os.PathLike[str]) -> list[str]:
    """The image paths a ``label_subset.txt`` lists (its ``#`` header lines skipped)."""
    return [line for line in Path(path).read_text().splitlines() if line and not line.startswith("#")]


# -- results.json ------------------------------------------------------------------------------------

RESULTS_FILE = "results.json"


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by ``None`` (containers walked) and numpy floats made
    floats, so that ``json.dumps`` writes valid JSON (``null``) instead of the non-standard ``NaN``."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    if isinstance(value, np.floating):
        return float(value)
    return value


def write_results(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a readout's ``results.json`` atomically as standard JSON: a metric that was not measured
    (NaN: a class absent from the val set, an AP with no predictions) is ``null``, never ``NaN``."""
    return write_text_atomic(json.dumps(json_safe(payload), indent=2, allow_nan=False), path)


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``results.json`` as a dict with a ``metrics`` object, or a one-line ValueError naming the file.

    Files from before :func:`write_results` may hold a bare ``NaN`` (detectron2's AP without
    predictions); it reads as a float NaN, which ``flowssl tables`` shows as n/a like ``null``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rerun that readout or delete the file") from exc
    if not isinstance(data, dict) or not isinstance(data.get("metrics", {}), dict):
        raise ValueError(f"{path} is not a readout result (expected an object with 'metrics'); "
                         "rerun that readout or delete the file")
    return data
