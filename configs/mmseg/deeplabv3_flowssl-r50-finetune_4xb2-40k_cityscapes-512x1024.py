_base_ = ["./deeplabv3_flowssl-r50-frozen_4xb2-40k_cityscapes-512x1024.py"]
# fine-tuned readout: every backbone parameter trains, SyncBN across GPUs
model = dict(backbone=dict(frozen=False, norm_cfg=dict(type="SyncBN", requires_grad=True)))
