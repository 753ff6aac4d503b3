# FlowE Table 1 standard readout on BDD100K: 60k iterations, batch 16, lr 0.02, poly.
_base_ = ["./_base_/flowssl_deeplabv1_r50.py", "./_base_/bdd100k_flowe.py", "mmseg::_base_/default_runtime.py",
          "mmseg::_base_/schedules/schedule_80k.py"]
crop_size = (512, 1024)
model = dict(data_preprocessor=dict(size=crop_size))
optimizer = dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type="OptimWrapper", optimizer=optimizer, clip_grad=None)
param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=60000, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=60000, val_interval=6000)
default_hooks = dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=6000))
# mIoU and per-class IoU for `flowssl tables`
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
