# Tiny CPU readout through PooDLe's spatial decoder (tests, demo): the synthetic readout of
# deeplabv1_flowssl-r14-frozen with a stride-32 encoder and the decoder of
# configs/pretrain/poodle_r14_synthetic_demo.py.
_base_ = ["./deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py"]
model = dict(backbone=dict(output_stride=32, decoder=dict(channels=2048, hidden_factor=0.5)),
             decode_head=dict(in_channels=2048, in_index=4))
