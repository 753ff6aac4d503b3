# PASCAL VOC 2012 + aug, the usual 512×512 protocol (20k iterations, batch 16, lr 0.01, poly).
_base_ = ["./_base_/flowssl_deeplabv1_r50.py", "mmseg::_base_/datasets/pascal_voc12_aug.py",
          "mmseg::_base_/default_runtime.py", "mmseg::_base_/schedules/schedule_20k.py"]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=21))
# mIoU and per-class IoU for `flowssl tables`
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
