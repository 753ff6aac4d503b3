# Tiny CPU readout on the synthetic Cityscapes-layout dataset (tests, demo, `flowssl bench --preset tiny`).
_base_ = ["./_base_/flowssl_deeplabv1_r50.py", "./_base_/synthetic_cityscapes.py", "mmseg::_base_/default_runtime.py"]
model = dict(data_preprocessor=dict(size=(64, 128)), backbone=dict(arch="resnet14"), decode_head=dict(num_classes=6))
optimizer = dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type="OptimWrapper", optimizer=optimizer, clip_grad=None)
param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=300, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=300, val_interval=300)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"), logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"), sampler_seed=dict(type="DistSamplerSeedHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=300),
    visualization=dict(type="SegVisualizationHook", draw=False))
env_cfg = dict(dist_cfg=dict(backend="gloo"))
# mIoU and per-class IoU for `flowssl tables`
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
