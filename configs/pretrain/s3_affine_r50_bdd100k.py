# S3-CNN with the affine motion loss: L = 5 soft regions from the OS8 features (the paper's L for its
# affine experiments, cube and Sintel).
_base_ = ["./_base_/sparse_flow_r50_bdd100k.py"]

model = dict(type="s3_affine", encoder=dict(arch="resnet50", output_stride=8), num_regions=5)
