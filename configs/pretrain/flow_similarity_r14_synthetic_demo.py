# Synthetic cross-pixel flow similarity: one view and its exact flow.
_base_ = ["./flowe_r14_synthetic_demo.py"]

model = dict(type="flow_similarity", _delete_=True, encoder=dict(arch="resnet14", output_stride=8),
             embedding_dim=16, num_points=256, max_flow=56.0, sigma2=0.01, head=dict(hidden_channels=128))
data = dict(affine=dict(scale=(1.0, 1.0), rotation=0.0))
optimizer = dict(type="AdamW", _delete_=True, lr=1e-3, weight_decay=1e-4)
