_base_ = ["./flow_similarity_r14_synthetic_demo.py"]

model = dict(type="s3_affine", _delete_=True, encoder=dict(arch="resnet14", output_stride=8), num_regions=8)
