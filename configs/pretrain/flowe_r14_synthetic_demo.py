# CPU demo: FlowE on the embedded synthetic video with its exact flow, light ResNet-14 (OS8).
_base_ = ["./byol_r14_synthetic_demo.py"]

model = dict(type="flowe", _delete_=True, encoder=dict(arch="resnet14", output_stride=8),
             projector=dict(hidden_channels=512, out_channels=128), predictor=dict(hidden_channels=512),
             base_momentum=0.99, loss_resolution="feature", symmetric=True)
data = dict(type="SyntheticPairs", _delete_=True, num_videos=64, num_frames=32, frame_gap=2, height=64, width=128,
            crop_size=(64, 128), flow=dict(type="ground_truth"), affine=dict(scale=(0.5, 2.0), rotation=30.0))
