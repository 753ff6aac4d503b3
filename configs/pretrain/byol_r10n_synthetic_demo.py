# byol_r14_synthetic_demo with the narrow CPU encoder (resnet10n, pretrain/readout.py ARCH_SPECS); every
# other setting as there. Read out with configs/mmseg/deeplabv1_flowssl-r10n-frozen_1xb4-300_synthetic-64x128.py.
_base_ = ["./byol_r14_synthetic_demo.py"]

model = dict(encoder=dict(arch="resnet10n"))
