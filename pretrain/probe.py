"""Readouts that measure features: a converged linear probe and a training-free dense kNN (issue 23).

A DeepLab v1 head trained by SGD for a few hundred steps measures the optimiser as much as the
features. These two readouts have no schedule to tune, so a difference between two checkpoints is a
difference between their features:

* :func:`linear_probe` — multinomial logistic regression on frozen stride-8 features, one weight
  vector per class, fitted **to convergence** by full-batch L-BFGS (strong Wolfe line search). The
  target of a stride-8 cell is its 8×8 pixels' label distribution (ignored pixels left out), the
  loss the soft-target cross-entropy plus ``l2/2·‖W‖²`` (bias free). The L2 term is fixed, not tuned:
  ``DEFAULT_L2 = 1e-4`` on the per-cell mean loss of standardised features makes the problem strictly
  convex (one optimum, reached whatever the start; finite even on separable data, where the
  unregularised optimum lies at infinity) while shrinking the weights far less than the data term
  moves them (for the ≈ 3·10⁴ cells of the tiny benchmark it is sklearn's ``C ≈ 0.3``).
* :func:`knn` — Hummingbird's dense nearest-neighbour retrieval (Balažević et al., NeurIPS 2023):
  a memory bank of readout-train cell features (L2-normalised) with their label distributions; each
  val cell takes its ``k`` most cosine-similar cells, weights them by ``softmax(similarity / T)``
  and sums their distributions into class scores. ``k = 20`` (the issue's 20–30) and ``T = 0.1``:
  softer than the 0.02 of open-hummingbird-eval (k = 30), so the vote is spread over the neighbours
  and one near-duplicate cell (readout frames come in correlated runs of 4 per video) does not
  decide alone.

Both score at **full resolution**: class scores (probe logits, kNN scores) are upsampled bilinearly to
the label size, the argmax is compared with the labels (ignore index 255) in one confusion matrix,
and :func:`iou_from_confusion` gives mIoU and per-class IoU as mmseg does (a class absent from both
labels and predictions is NaN and left out of the mean). Features are standardised per channel with
the readout-train statistics first (:func:`standardise`), for the kNN too: ReLU features are all
non-negative, and without centring every cosine similarity of an untrained encoder is near 1.

:func:`label_ceiling` feeds one-hot ground-truth labels at stride 8 (each cell's majority label)
through the same readout: what a perfect stride-8 feature could score, so a weak method can be told
from a weak benchmark. :func:`recalibrate_bn` re-estimates BatchNorm statistics on readout-train
frames (the honest Rand Init floor). :func:`checkpoint_features` extracts features once per
checkpoint and caches them, keyed by the checkpoint's sha256, the encoder and the images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .fileio import CheckpointError, load_checkpoint, safe_torch_load, save_atomic, sha256_file
from .readout import IMAGENET_MEAN, IMAGENET_STD

STRIDE = 8
IGNORE_INDEX = 255
DEFAULT_L2 = 1e-4
DEFAULT_MAX_ITER = 1000
# L-BFGS stops when the largest |gradient| of the mean loss is below DEFAULT_TOL. Measured on the demo's
# Rand Init features (2048 channels, 64 frames): tol 1e-4 stops after 330 iterations, at a loss 1.6e-4
# above the point where float32 stalls (597 iterations, tol 1e-5 or 1e-6) and an mIoU 0.03 from it.
DEFAULT_TOL = 1e-4
DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.1
READOUTS = ("linear_probe", "knn")
CACHE_VERSION = 1


@dataclass
class ReadoutResult:
    """A readout's score on the val set, and for the probe how its fit ended."""

    miou: float
    iou: list[float]  # per class, in percent; NaN where a class is in neither labels nor predictions
    confusion: torch.Tensor  # [K, K]: rows ground truth, columns prediction (pixels)
    fit: dict[str, Any] = field(default_factory=dict)  # linear probe: iterations, converged, loss
    per_image: torch.Tensor | None = None  # [N, K, K]: each val image's confusion, for bootstrap intervals
    predictions: torch.Tensor | None = None  # [N, H, W] uint8: the full-resolution prediction per val image

    def metrics(self, class_names: Sequence[str]) -> dict[str, float]:
        """``aAcc``, ``mIoU``, ``mAcc`` and ``IoU.<class>`` in percent: the keys mmseg's readout writes."""
        conf = self.confusion.double()
        acc = conf.diag() / conf.sum(1)
        return {"aAcc": float(100 * conf.diag().sum() / conf.sum().clamp(min=1)), "mIoU": self.miou,
                "mAcc": float(100 * acc[~acc.isnan()].mean()) if (~acc.isnan()).any() else math.nan,
                **{f"IoU.{n}": v for n, v in zip(class_names, self.iou, strict=True)}}


# -- metric -------------------------------------------------------------------------------------------

def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[K, K] pixel counts (row: label, column: prediction) over the pixels whose label is not ignored."""
    valid = label != ignore_index
    idx = label[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(confusion: torch.Tensor) -> tuple[float, list[float]]:
    """(mIoU, per-class IoU) in percent. IoU = TP / (TP + FP + FN); a class with an empty union (in
    neither labels nor predictions) is NaN and left out of the mean, as in mmseg's ``IoUMetric``."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan)) * 100
    measured = iou[~iou.isnan()]
    return (float(measured.mean()) if len(measured) else math.nan), [float(v) for v in iou]


def check_labels(labels: torch.Tensor, num_classes: int, where: str = "labels") -> None:
    """A ValueError naming ``where`` when a label id is outside ``0..K-1`` and not the ignore index."""
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != IGNORE_INDEX)
    if bool(bad.any()):
        ids = sorted({int(v) for v in labels[bad].unique()[:8]})
        raise ValueError(f"{where}: label id {ids[0]} is outside 0..{num_classes - 1} and not the ignore index "
                         f"{IGNORE_INDEX} (ids found: {ids}); the labels do not fit {num_classes} classes")


def score(class_scores: torch.Tensor, labels: torch.Tensor, num_classes: int, batch: int = 8) -> ReadoutResult:
    """Score stride-8 class scores [N, K, h, w] against full-resolution labels [N, H, W]: bilinear
    upsampling to (H, W), argmax, one confusion matrix over all images (and one per image, kept for
    :func:`bootstrap_miou`)."""
    check_labels(labels, num_classes)
    per_image = torch.zeros(len(labels), num_classes, num_classes, dtype=torch.long)
    predictions = torch.zeros(labels.shape, dtype=torch.uint8)
    for i in range(0, len(labels), batch):
        up = F.interpolate(class_scores[i:i + batch].float(), size=labels.shape[-2:], mode="bilinear",
                           align_corners=False)
        for j, (pred, label) in enumerate(zip(up.argmax(1), labels[i:i + batch], strict=True)):
            per_image[i + j] = confusion_matrix(pred, label, num_classes)
            predictions[i + j] = pred
    conf = per_image.sum(0)
    miou, iou = iou_from_confusion(conf)
    return ReadoutResult(miou, iou, conf, per_image=per_image, predictions=predictions)


def bootstrap_miou(per_image: Sequence[torch.Tensor], samples: int = 1000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval over val images of the mean mIoU across runs (seeds).

    ``per_image``: one [N, K, K] per run, the same N val images in the same order; each resample draws
    N image indices with replacement, shared by every run (the images are the random part, the seeds
    are averaged), and scores each run on the pooled confusion of the drawn images."""
    stacks = torch.stack([p.double() for p in per_image])  # [R, N, K, K]
    if stacks.ndim != 4 or stacks.shape[-1] != stacks.shape[-2]:
        raise ValueError(f"per-image confusions must be [N, K, K] per run, got {tuple(stacks.shape[1:])}")
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, stacks.shape[1], (samples, stacks.shape[1]), generator=g)
    values = []
    for idx in draws:
        conf = stacks[:, idx].sum(1)  # [R, K, K]
        values.append(sum(iou_from_confusion(c)[0] for c in conf) / len(conf))
    v = torch.tensor(values)
    lo, hi = torch.quantile(v, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=v.dtype)).tolist()
    return lo, hi


# -- stride-8 targets ---------------------------------------------------------------------------------

def cell_distributions(labels: torch.Tensor, num_classes: int, size: tuple[int, int] | None = None,
                       stride: int = STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """(distributions [N, K, h, w], valid [N, h, w]): each stride×stride cell's label distribution
    (the mean of its pixels' one-hot labels, ignored pixels left out) and whether it has any labelled
    pixel. ``size`` is the feature grid (default ``ceil(H/stride) × ceil(W/stride)``); labels are
    padded with the ignore index up to ``size·stride``."""
    check_labels(labels, num_classes)
    n, height, width = labels.shape
    h, w = size or (math.ceil(height / stride), math.ceil(width / stride))
    if not (h * stride >= height > (h - 1) * stride and w * stride >= width > (w - 1) * stride):
        raise ValueError(f"a feature grid of {h}×{w} is not stride {stride} for labels of {height}×{width}; "
                         f"the encoder must have output stride {stride}")
    padded = F.pad(labels.long(), (0, w * stride - width, 0, h * stride - height), value=IGNORE_INDEX)
    valid_px = padded != IGNORE_INDEX
    onehot = F.one_hot(torch.where(valid_px, padded, 0), num_classes).permute(0, 3, 1, 2).float()
    counts = F.avg_pool2d(onehot * valid_px[:, None], stride) * stride * stride  # [N, K, h, w]
    total = counts.sum(1)
    return counts / total.clamp(min=1)[:, None], total > 0


def label_features(labels: torch.Tensor, num_classes: int, stride: int = STRIDE) -> torch.Tensor:
    """One-hot ground-truth labels at stride 8 [N, K, h, w]: each cell's majority label (a cell with
    no labelled pixel is all zeros) — the features of a perfect stride-8 encoder."""
    dist, valid = cell_distributions(labels, num_classes, stride=stride)
    onehot = F.one_hot(dist.argmax(1), num_classes).permute(0, 3, 1, 2).float()
    return onehot * valid[:, None]


# -- features -----------------------------------------------------------------------------------------

def standardise(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, ...]:
    """Features [N, C, h, w] minus the readout-train mean, over the readout-train standard deviation,
    per channel; the statistics never see the val features. A constant channel (a dead ReLU) becomes 0."""
    var, mean = torch.var_mean(train.double(), (0, 2, 3), keepdim=True)  # float64 sums, one copy
    std = var.sqrt()
    std = torch.where(std > eps, std, torch.ones_like(std)).float()
    return tuple((f - mean.float()) / std for f in (train, *others))


def _normalised(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (or 0-1 float) images [B, 3, H, W] → ImageNet-normalised float, as every flowssl
    encoder is trained (pretrain.data.augment.normalize)."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Frozen features [N, C, H/8, W/8] of uint8 RGB images [N, 3, H, W] (eval mode, no gradients)."""
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        out = [encoder(_normalised(images[i:i + batch_size]).to(device)).float().cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        encoder.train(was_training)
    feats = torch.cat(out)
    height, width = images.shape[-2:]
    if feats.shape[-2:] != (math.ceil(height / STRIDE), math.ceil(width / STRIDE)):
        raise ValueError(f"the encoder maps {height}×{width} images to a {tuple(feats.shape[-2:])} grid, not stride "
                         f"{STRIDE}; read out an output-stride-8 encoder")
    return feats


@torch.no_grad()
def recalibrate_bn(encoder: nn.Module, images: torch.Tensor, batch_size: int = 8) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on ``images`` (uint8 RGB, the
    readout-train frames): the honest floor for a randomly initialised encoder, whose stored statistics
    (mean 0, variance 1) do not describe its activations. ``momentum=None`` makes the estimate the
    cumulative average over batches: the mean is exact for equal batches, the variance the mean of the
    batches' unbiased variances. Returns how many BatchNorm layers were recalibrated; the encoder is left
    in eval mode."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    device = next(encoder.parameters()).device
    encoder.train()
    try:
        for i in range(0, len(images), batch_size):
            encoder(_normalised(images[i:i + batch_size]).to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        encoder.eval()
    return len(norms)


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def encoder_from_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """(encoder at output stride 8 with the checkpoint's weights, its build arguments).

    A flowssl checkpoint is rebuilt from the ``model.encoder`` settings it stores as JSON (nothing is
    executed), so any encoder the config can build is read; another layout (torchvision, MoCo, …) is
    read by :func:`pretrain.convert.read_encoder` as a bottleneck ResNet of its arch. Every encoder is
    dilated to output stride 8, as the other readouts do (PooDLe trains at 32)."""
    from .convert import read_encoder
    from .models import build_encoder

    obj = load_checkpoint(path)
    if isinstance(obj.get("encoder"), dict) and isinstance(obj.get("settings"), str):
        settings = json.loads(obj["settings"])
        prefix = "model.encoder."
        kwargs = _unflatten({k[len(prefix):]: v for k, v in settings.items() if k.startswith(prefix)})
        state = obj["encoder"]
    else:
        enc = read_encoder(path, drop_heads=True)
        kwargs, state = {"arch": enc.arch}, enc.state
    kwargs["output_stride"] = STRIDE
    encoder = build_encoder(**kwargs)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: its encoder weights do not fit {kwargs} "
                              f"({str(exc).splitlines()[0]})") from None
    return encoder.eval(), kwargs


def images_digest(paths: Sequence[str | os.PathLike[str]]) -> str:
    """sha256 over the images' names and bytes: a rewritten data folder is a different image list."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(os.fspath(p)).encode() + b"\0")
        h.update(sha256_file(Path(p)).encode())
    return h.hexdigest()


def cached_features(path: str | os.PathLike[str], key: dict[str, Any],
                    compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """(features, reused): the features stored at ``path`` when it was written for exactly ``key`` (a
    JSON-like dict: checkpoint sha256, encoder, images …), else ``compute()``, stored atomically with the
    key. A stale, foreign or unreadable cache is rebuilt, never used. Features are stored as float16
    when they fit (half the disk) and always returned as the float32 of what is stored, so a run that
    computes them and a run that reuses them read out identical numbers."""
    path = Path(path)
    if path.is_file():
        try:
            stored = safe_torch_load(path, what="feature cache")
        except CheckpointError:
            stored = None
        if isinstance(stored, dict) and stored.get("key") == key and torch.is_tensor(stored.get("features")):
            return stored["features"].float(), True
    feats = compute()
    half = feats.half()
    kept = half if torch.isfinite(half).all() else feats
    save_atomic({"key": key, "features": kept}, path)
    return kept.float(), False


def checkpoint_features(checkpoint: str | os.PathLike[str], splits: dict[str, tuple[torch.Tensor, Sequence[Path]]],
                        cache_dir: str | os.PathLike[str], recalibrate_on: str | None = None,
                        batch_size: int = 8) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """({split: features}, info): each split's frozen stride-8 features (images uint8 [N, 3, H, W] and
    their files), cached in ``cache_dir/<split>.pt``. With ``recalibrate_on`` (a split name), the
    encoder's BatchNorm statistics are first re-estimated on that split's images. The encoder is only
    built when a cache misses; ``info`` says which splits were reused."""
    checkpoint = Path(checkpoint)
    base = {"version": CACHE_VERSION, "checkpoint_sha256": sha256_file(checkpoint), "stride": STRIDE,
            "pixel_mean": list(IMAGENET_MEAN), "pixel_std": list(IMAGENET_STD),
            "recalibrated_on": None if recalibrate_on is None else
            {"images_sha256": images_digest(splits[recalibrate_on][1]), "batch_size": batch_size}}
    encoder: list[nn.Module] = []

    def model() -> nn.Module:
        if not encoder:
            enc, _ = encoder_from_checkpoint(checkpoint)
            if recalibrate_on is not None:
                recalibrate_bn(enc, splits[recalibrate_on][0], batch_size)
            encoder.append(enc)
        return encoder[0]

    out, reused = {}, {}
    for split, (images, paths) in splits.items():
        key = {**base, "split": split, "images": [os.path.basename(os.fspath(p)) for p in paths],
               "images_sha256": images_digest(paths), "shape": list(images.shape)}
        out[split], reused[split] = cached_features(Path(cache_dir) / f"{split}.pt", key,
                                                    lambda im=images: extract_features(model(), im, batch_size))
    return out, {"reused": reused, "recalibrated": recalibrate_on is not None}


def read_cityscapes_split(root: str | os.PathLike[str], split: str) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """(images uint8 RGB [N, 3, H, W], labels [N, H, W], image files) of a Cityscapes-layout split:
    ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine/.../*_gtFine_labelTrainIds.png``."""
    import cv2
    import numpy as np

    root = Path(root)
    files = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not files:
        raise FileNotFoundError(f"no images under {root / 'leftImg8bit' / split}/*/ (*_leftImg8bit.png); is {root} a "
                                "Cityscapes-layout dataset?")
    images, labels = [], []
    for f in files:
        gt = root / "gtFine" / split / f.parent.name / f.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
        image, label = cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.imread(str(gt), cv2.IMREAD_UNCHANGED)
        if image is None or label is None:
            raise FileNotFoundError(f"cannot read {f if image is None else gt}; rewrite the dataset")
        if label.shape != image.shape[:2]:
            raise ValueError(f"{gt} is {label.shape[1]}×{label.shape[0]}, its image {image.shape[1]}×{image.shape[0]}")
        images.append(torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1))
        labels.append(torch.from_numpy(label.astype(np.int64)))
    return torch.stack(images), torch.stack(labels), files


def read_cityscapes_instances(files: Sequence[str | os.PathLike[str]]) -> torch.Tensor:
    """Instance ids [N, H, W] (``class*1000 + k`` for things, the train id below 1000 for stuff) of the
    ``*_leftImg8bit.png`` files :func:`read_cityscapes_split` returned, from their ``gtFine`` twins."""
    import cv2
    import numpy as np

    out = []
    for f in map(Path, files):
        split_dir = f.parent.parent
        gt = (split_dir.parent.parent / "gtFine" / split_dir.name / f.parent.name
              / f.name.replace("_leftImg8bit.png", "_gtFine_instanceIds.png"))
        ids = cv2.imread(str(gt), cv2.IMREAD_UNCHANGED)
        if ids is None:
            raise FileNotFoundError(f"cannot read {gt}; the small/large-instance diagnostic needs the instance ids "
                                    "write_cityscapes_layout writes")
        out.append(torch.from_numpy(ids.astype(np.int64)))
    return torch.stack(out)


# -- diagnostics (issue 23: what a readout's mIoU is made of) -----------------------------------------

def foreground_labels(labels: torch.Tensor, background: int = 0) -> torch.Tensor:
    """Binary labels: 0 for ``background``, 1 for every other class, the ignore index kept — the
    target of the foreground/background probe (objectness, without class)."""
    return torch.where(labels == IGNORE_INDEX, labels, (labels != background).long())


def instance_recall(predictions: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
    """[M, 3] float64 rows (visible area in pixels, class, recall) for every thing instance (id ≥ 1000,
    class ``id // 1000``) of every image: recall = the fraction of its pixels predicted as its class.
    PooDLe's claim is about small objects; grouping these rows by area says whether a readout's mIoU
    comes from the large ones."""
    if predictions.shape != instances.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and instance ids {tuple(instances.shape)} "
                         "differ in shape; score the same val frames")
    rows = []
    for pred, ids in zip(predictions.long(), instances.long(), strict=True):
        things = ids >= 1000
        uniq, inverse, area = torch.unique(ids[things], return_inverse=True, return_counts=True)
        hit = (pred[things] == ids[things] // 1000).double()
        correct = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, hit)
        rows.append(torch.stack([area.double(), (uniq // 1000).double(), correct / area], 1))
    return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.float64)


# -- readouts -----------------------------------------------------------------------------------------

def _cells(features: torch.Tensor) -> torch.Tensor:
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def _grid(cells: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    n, _, h, w = like.shape
    return cells.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def fit_softmax_regression(x: torch.Tensor, targets: torch.Tensor, l2: float = DEFAULT_L2,
                           max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL) -> dict[str, Any]:
    """Multinomial logistic regression with soft targets, to convergence.

    Minimises ``mean_i −Σ_k t_ik log softmax(W x_i + b)_k + l2/2·‖W‖²`` over (W, b), from zero, by
    full-batch L-BFGS with a strong Wolfe line search; stops when the largest |gradient| is below
    ``tol`` or the loss and step stop changing, at most ``max_iter`` iterations. Returns ``weight``
    [K, C], ``bias`` [K], ``iterations``, ``converged`` (stopped before the cap) and the final ``loss``."""
    if max_iter < 1 or tol <= 0 or l2 < 0:
        raise ValueError(f"linear probe: max_iter must be ≥ 1, tol > 0 and l2 ≥ 0 (got {max_iter}, {tol}, {l2})")
    x, targets = x.float(), targets.float()
    weight = torch.zeros(targets.shape[1], x.shape[1], requires_grad=True)
    bias = torch.zeros(targets.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=tol,
                            tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logp = torch.log_softmax(x @ weight.T + bias, dim=1)
        loss = -(targets * logp).sum(1).mean() + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        loss = float(closure().detach())
    iterations = int(opt.state[weight]["n_iter"])
    return {"weight": weight.detach(), "bias": bias.detach(), "iterations": iterations,
            "converged": iterations < max_iter, "loss": loss}


def linear_probe(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor,
                 num_classes: int, l2: float = DEFAULT_L2, max_iter: int = DEFAULT_MAX_ITER,
                 tol: float = DEFAULT_TOL) -> ReadoutResult:
    """Fit a softmax regression to the readout-train cells' label distributions
    (:func:`fit_softmax_regression`; cells without a labelled pixel left out) and score its logits on
    val at full resolution (:func:`score`). ``fit`` holds the iterations used."""
    dist, valid = cell_distributions(train_labels, num_classes, size=tuple(train.shape[-2:]))
    mask = valid.reshape(-1)
    fit = fit_softmax_regression(_cells(train)[mask], _cells(dist)[mask], l2, max_iter, tol)
    logits = _grid(_cells(val) @ fit["weight"].T + fit["bias"], val)
    result = score(logits, val_labels, num_classes)
    result.fit = {k: fit[k] for k in ("iterations", "converged", "loss")} | {"l2": l2, "max_iter": max_iter, "tol": tol}
    return result


def knn_scores(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, num_classes: int,
               k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE,
               max_elements: int = 1 << 22) -> torch.Tensor:
    """Hummingbird class scores [N, K, h, w] of the val cells: cosine similarity to the memory bank
    (readout-train cells with a labelled pixel, L2-normalised), the top ``k``, ``softmax(sim / T)`` over
    them, and the weighted sum of their label distributions. Similarities are computed in chunks of at
    most ``max_elements`` entries, so memory stays small whatever the bank."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn: k must be ≥ 1 and temperature > 0 (got k={k}, temperature={temperature})")
    dist, valid = cell_distributions(train_labels, num_classes, size=tuple(train.shape[-2:]))
    mask = valid.reshape(-1)
    keys = F.normalize(_cells(train)[mask], dim=1)
    values = _cells(dist)[mask]
    if len(keys) == 0:
        raise ValueError("knn: no readout-train cell has a labelled pixel; the memory bank is empty")
    k = min(k, len(keys))
    queries = F.normalize(_cells(val), dim=1)
    chunk = max(1, max_elements // len(keys))
    out = []
    for i in range(0, len(queries), chunk):
        sim, idx = (queries[i:i + chunk] @ keys.T).topk(k, dim=1)
        weights = torch.softmax(sim / temperature, dim=1)
        out.append(torch.einsum("qk,qkc->qc", weights, values[idx]))
    return _grid(torch.cat(out), val)


def knn(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor,
        num_classes: int, k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE) -> ReadoutResult:
    """Dense kNN retrieval (:func:`knn_scores`), scored at full resolution (:func:`score`)."""
    result = score(knn_scores(train, train_labels, val, num_classes, k, temperature), val_labels, num_classes)
    result.fit = {"k": k, "temperature": temperature}
    return result


def read_out(name: str, train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor,
             val_labels: torch.Tensor, num_classes: int, **options: Any) -> ReadoutResult:
    """The readout ``name`` ("linear_probe" or "knn") on per-channel standardised features: what the
    bench runs for every checkpoint and :func:`label_ceiling` for the labels."""
    readouts: dict[str, Callable[..., ReadoutResult]] = {"linear_probe": linear_probe, "knn": knn}
    if name not in readouts:
        raise ValueError(f"unknown feature readout '{name}'; choose one of {list(READOUTS)}")
    train, val = standardise(train, val)
    return readouts[name](train, train_labels, val, val_labels, num_classes, **options)


def label_ceiling(train_labels: torch.Tensor, val_labels: torch.Tensor, num_classes: int,
                  readout: str = "linear_probe", **options: Any) -> ReadoutResult:
    """The readout of one-hot ground-truth labels at stride 8 (:func:`label_features`) through the same
    readout and scoring as every encoder: the best a stride-8 readout of these frames can score."""
    return read_out(readout, label_features(train_labels, num_classes), train_labels,
                    label_features(val_labels, num_classes), val_labels, num_classes, **options)
