_base_ = ["./flow_similarity_r14_synthetic_demo.py"]

# L = 10: the paper's entropy run (S3-CNN, Mahendran et al. 2018).
model = dict(type="s3_entropy", _delete_=True, encoder=dict(arch="resnet14", output_stride=8), num_regions=10)
