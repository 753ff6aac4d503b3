# FlowE on Cityscapes leftImg8bit_sequence snippets (17 Hz): pairs 8 frames (~0.5 s) apart,
# native 1024×2048, otherwise the §4.2 protocol. Precompute flow with `flowssl flow precompute`
# and switch to data.flow=dict(type="precomputed", root=...) to train without RAFT in the loop.
_base_ = ["./_base_/flowe_r50.py"]

data = dict(type="CityscapesSequencePairs", root="data/cityscapes", split="train", interval=8,
            crop_size=(512, 1024), scale_range=(0.75, 1.25), flow=None,
            affine=dict(scale=(0.5, 2.0), rotation=30.0))
max_iters = 60000
