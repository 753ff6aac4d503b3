_base_ = ["./deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py"]
model = dict(backbone=dict(frozen=False))
