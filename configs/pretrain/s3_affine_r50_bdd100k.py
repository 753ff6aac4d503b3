# S3-CNN with the affine motion loss: L = 8 soft regions from the OS8 features.
_base_ = ["./_base_/sparse_flow_r50_bdd100k.py"]

model = dict(type="s3_affine", encoder=dict(arch="resnet50", output_stride=8), num_regions=8)
