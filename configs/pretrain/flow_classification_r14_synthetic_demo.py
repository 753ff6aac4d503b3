_base_ = ["./flow_similarity_r14_synthetic_demo.py"]

model = dict(type="flow_classification", _delete_=True, encoder=dict(arch="resnet14", output_stride=8), bins=16,
             num_points=256, max_flow=56.0, head=dict(hidden_channels=128))
