# S3-CNN with the flow-magnitude histogram entropy loss (the paper's choice for noisy real flow): L = 10
# regions as in its YouTube experiment; 16 bins (not given in the paper) spanning [0, the 99th percentile
# of each image's valid flow magnitudes], so a few outliers cannot squeeze the real motions into one bin.
_base_ = ["./_base_/sparse_flow_r50_bdd100k.py"]

model = dict(type="s3_entropy", encoder=dict(arch="resnet50", output_stride=8), num_regions=10, bins=16,
             range_quantile=0.99)
