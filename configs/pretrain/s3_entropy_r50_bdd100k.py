# S3-CNN with the flow-magnitude histogram entropy loss (the paper's choice for noisy real flow).
_base_ = ["./_base_/sparse_flow_r50_bdd100k.py"]

model = dict(type="s3_entropy", encoder=dict(arch="resnet50", output_stride=8), num_regions=8, bins=16)
