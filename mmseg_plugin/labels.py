"""Label ids checked against the config's classes, with the label file named.

A label map whose ids do not fit the config (raw Cityscapes ids instead of trainIds, a 0-255 palette
PNG, the wrong ``num_classes``) otherwise fails in training as torch's ``IndexError: Target 33 is out
of bounds`` naming no file, and in evaluation is worse: mmseg's ``IoUMetric`` counts labels with
``torch.histc``, which drops out-of-range ids without a word, so the mIoU is computed on fewer pixels.
"""

from __future__ import annotations

from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS


class LabelIdError(ValueError):
    """A label map holds an id outside ``0..num_classes-1`` that is not the ignore index."""


def check_label_ids(label: torch.Tensor, num_classes: int, ignore_index: int, path: Any) -> None:
    """Raise :class:`LabelIdError` naming ``path`` and the first bad id when ``label`` (one label map)
    has ids outside ``[0, num_classes)`` other than ``ignore_index``."""
    bad = ((label < 0) | (label >= num_classes)) & (label != ignore_index)
    if bool(bad.any()):
        ids = sorted({int(v) for v in torch.unique(label[bad])[:8]})
        raise LabelIdError(f"label file {path or '(unknown file)'}: label id {ids[0]} is outside 0..{num_classes - 1} "
                           f"and not the ignore index {ignore_index} (ids found: {ids}); the labels do not fit this "
                           f"config's {num_classes} classes (e.g. raw ids instead of trainIds, or a wrong num_classes)")


@HOOKS.register_module()
class LabelIdCheckHook(Hook):
    """Checks each training batch's label maps before the loss sees them (main process, a
    comparison per pixel: negligible next to the forward pass)."""

    priority = "VERY_HIGH"

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        head = getattr(model, "decode_head", None)
        num_classes, ignore_index = getattr(head, "num_classes", None), getattr(head, "ignore_index", 255)
        if num_classes is None or not isinstance(data_batch, dict):
            return
        for sample in data_batch.get("data_samples") or []:
            gt = getattr(sample, "gt_sem_seg", None)
            if gt is not None:
                check_label_ids(gt.data, num_classes, ignore_index, sample.metainfo.get("seg_map_path"))
