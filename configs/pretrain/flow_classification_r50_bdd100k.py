# The cross-pixel paper's baseline: per-pixel 16-bin classification of each flow component.
_base_ = ["./_base_/sparse_flow_r50_bdd100k.py"]

model = dict(type="flow_classification", encoder=dict(arch="resnet50", output_stride=8), bins=16,
             num_points=512, max_flow=56.0)
