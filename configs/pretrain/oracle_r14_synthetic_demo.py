# Issue 23's ceiling ("oracle"): the demos' ResNet-14 (OS8), videos, 64×128 views and budget, trained
# supervised on the pretraining videos' own labels — per-pixel cross-entropy of each pixel against its
# stride-8 cell's logits from a 1×1 conv head (plain, unweighted). Views as the BYOL demo's view 1, the
# label map cropped, resized (nearest) and flipped with it. Optimiser as the flow-similarity demo.
_base_ = ["./byol_r14_synthetic_demo.py"]

model = dict(type="oracle", _delete_=True, encoder=dict(arch="resnet14", output_stride=8))
data = dict(labels=True)
optimizer = dict(type="AdamW", _delete_=True, lr=1e-3, weight_decay=1e-4)
