"""mmseg's ``IoUMetric`` plus per-class IoU in the returned metrics (the tables read them)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        results = tuple(zip(*results, strict=True))
        area_intersect, area_union = sum(results[0]), sum(results[1])
        iou = (area_intersect / area_union).numpy()
        classes = self.dataset_meta["classes"]
        per_class = OrderedDict((f"IoU.{c}", round(float(np.nan_to_num(v) * 100), 2)) for c, v in zip(classes, iou,
                                                                                                       strict=True))
        metrics.update(per_class)
        return metrics
