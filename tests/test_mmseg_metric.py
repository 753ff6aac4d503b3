"""PerClassIoUMetric follows mmseg's IoUMetric: a class absent from ground truth and prediction is NaN
(left out of mIoU), and the results JSON stores it as null."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("mmseg")

from mmseg.evaluation.metrics import IoUMetric  # noqa: E402

from mmseg_plugin.metric import PerClassIoUMetric  # noqa: E402
from pretrain.readout import json_safe  # noqa: E402

CLASSES = ("road", "car", "bus", "person")


def _sample(pred: list[list[int]], gt: list[list[int]]) -> dict:
    return {"pred_sem_seg": {"data": torch.tensor([pred])}, "gt_sem_seg": {"data": torch.tensor([gt])}}


def _evaluate(metric: IoUMetric, samples: list[dict]) -> dict[str, float]:
    metric.dataset_meta = {"classes": CLASSES}
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


# "bus" (2) is in neither ground truth nor prediction: NaN. "person" (3) is predicted but not in the
# ground truth: IoU 0 (its union is not empty), as in mmseg. 255 is ignored.
SAMPLES = [_sample([[0, 0, 1, 3]], [[0, 0, 1, 1]]), _sample([[0, 1, 1, 0]], [[0, 1, 255, 1]])]


def test_absent_class_is_nan_and_miou_equals_mmseg():
    ours = _evaluate(PerClassIoUMetric(iou_metrics=["mIoU"]), SAMPLES)
    theirs = _evaluate(IoUMetric(iou_metrics=["mIoU"]), SAMPLES)
    assert math.isnan(ours["IoU.bus"])
    assert ours["IoU.person"] == 0.0
    assert ours["IoU.road"] == pytest.approx(100 * 3 / 4) and ours["IoU.car"] == pytest.approx(100 * 2 / 4)
    assert ours["mIoU"] == theirs["mIoU"] == pytest.approx((75 + 50 + 0) / 3, abs=0.01)  # nanmean over 3 classes
    assert {k: ours[k] for k in theirs} == theirs  # aAcc, mIoU, mAcc untouched


def test_nan_to_num_applies_to_the_per_class_values_as_in_mmseg():
    ours = _evaluate(PerClassIoUMetric(iou_metrics=["mIoU"], nan_to_num=0), SAMPLES)
    assert ours["IoU.bus"] == 0.0
    assert ours["mIoU"] == _evaluate(IoUMetric(iou_metrics=["mIoU"], nan_to_num=0), SAMPLES)["mIoU"]


def _strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_safe_turns_nan_into_null():
    value = json_safe({"a": float("nan"), "b": [1.5, float("inf")], "c": "x", "d": None})
    assert _strict_json(json.dumps(value)) == {"a": None, "b": [1.5, None], "c": "x", "d": None}


def test_run_test_writes_absent_classes_as_null(tmp_path, monkeypatch):
    import mmseg_plugin.runner as runner_mod
    from mmseg_plugin.runner import load_cfg, run_test

    from .test_mmseg_plugin import TINY

    metrics = {"aAcc": 90.0, "mIoU": 62.5, "mAcc": 70.0, "IoU.road": 75.0, "IoU.bus": float("nan")}
    fake = SimpleNamespace(test=lambda: dict(metrics))
    monkeypatch.setattr(runner_mod.Runner, "from_cfg", staticmethod(lambda cfg: fake))
    result = run_test(load_cfg(TINY, tmp_path), None, tmp_path / "results.json")
    saved = _strict_json((tmp_path / "results.json").read_text())
    assert saved == result
    assert saved["metrics"]["IoU.bus"] is None and saved["metrics"]["mIoU"] == 62.5
