_base_ = ["./deeplabv1_flowssl-r50-frozen_8xb2-60k_bdd100k-512x1024.py"]
# fine-tuned readout: every backbone parameter trains, SyncBN across GPUs
model = dict(backbone=dict(frozen=False, norm_cfg=dict(type="SyncBN", requires_grad=True)))
