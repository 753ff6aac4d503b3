# The tiny synthetic readout of deeplabv1_flowssl-r14-frozen for the narrow CPU encoder (resnet10n: basic
# blocks, 128 channels out of layer4).
_base_ = ["./deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py"]
model = dict(backbone=dict(arch="resnet10n"), decode_head=dict(in_channels=128))
