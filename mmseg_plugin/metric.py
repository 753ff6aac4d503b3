"""mmseg's ``IoUMetric`` plus per-class IoU in the returned metrics (the tables read them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import METRICS

from .labels import check_label_ids


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """``IoUMetric`` whose result also holds ``IoU.<class>`` for every class.

    The per-class values are mmseg's own (``total_area_to_metrics``, rounded as its class table):
    a class that appears neither in the ground truth nor in the prediction has IoU 0/0 = NaN, exactly
    where mmseg's table says ``nan`` and ``mIoU`` (a ``nanmean``) leaves it out. Reporting 0.0 there
    would make the per-class numbers disagree with the mIoU next to them. ``nan_to_num`` applies as
    in mmseg. JSON writers must store NaN as ``null`` (:func:`pretrain.readout.write_results` does).
    """

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """mmseg's, after checking the label ids: ``IoUMetric`` drops out-of-range ids silently."""
        if not self.format_only:
            num_classes = len(self.dataset_meta["classes"])
            for sample in data_samples:
                check_label_ids(sample["gt_sem_seg"]["data"], num_classes, self.ignore_index,
                                sample.get("seg_map_path"))
        super().process(data_batch, data_samples)

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only:
            return metrics
        totals = [sum(column) for column in zip(*results, strict=True)]
        per_class = self.total_area_to_metrics(*totals, ["mIoU"], self.nan_to_num, self.beta)["IoU"]
        for name, value in zip(self.dataset_meta["classes"], per_class, strict=True):
            metrics[f"IoU.{name}"] = float(np.round(value * 100, 2))
        return metrics

