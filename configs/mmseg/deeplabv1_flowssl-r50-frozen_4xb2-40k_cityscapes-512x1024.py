# FlowE Table 3 standard readout on Cityscapes: 512×1024, 40k iterations, batch 8, lr 0.01, poly.
_base_ = ["./_base_/flowssl_deeplabv1_r50.py", "mmseg::_base_/datasets/cityscapes.py",
          "mmseg::_base_/default_runtime.py", "mmseg::_base_/schedules/schedule_40k.py"]
crop_size = (512, 1024)
model = dict(data_preprocessor=dict(size=crop_size))
# mIoU and per-class IoU for `flowssl tables`
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
