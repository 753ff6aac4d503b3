# PooDLe read out as its authors do: through its spatial decoder (their README: linear evaluation needs "a
# custom model file ... with the SDM"). The frozen stride-32 encoder + frozen decoder give a stride-8 map; the
# readout is one 1×1 conv on it. Weights: a PooDLe pretraining checkpoint, or `flowssl convert --to mmseg
# --with-decoder`. Schedule and data: FlowE's standard BDD100K readout (the authors' linear-probe schedule is
# not in their released code). For the encoder alone (FlowE's protocol) use the deeplabv1_flowssl-r50-frozen
# configs with model.backbone.output_stride=32.
_base_ = ["./deeplabv1_flowssl-r50-frozen_8xb2-60k_bdd100k-512x1024.py"]
model = dict(backbone=dict(output_stride=32, decoder=dict(channels=2048, hidden_factor=0.5)),
             decode_head=dict(in_channels=2048, in_index=4))
