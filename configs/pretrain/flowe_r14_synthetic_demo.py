# CPU demo: FlowE on the embedded synthetic video with its exact flow, light ResNet-14 (OS8).
# 64×128 crops of the 128×256 video (the readout's pixel scale; only the crop is rendered), pairs
# 4 frames = 0.4 s apart (UrbanCity's interval, FlowE §4.1), the paper's affines (§3.3).
_base_ = ["./byol_r14_synthetic_demo.py"]

model = dict(type="flowe", _delete_=True, encoder=dict(arch="resnet14", output_stride=8),
             projector=dict(hidden_channels=512, out_channels=128), predictor=dict(hidden_channels=512),
             base_momentum=0.99, loss_resolution="feature", symmetric=True)
data = dict(type="SyntheticPairs", _delete_=True, num_videos=64, num_frames=32, frame_gap=4, height=128, width=256,
            crop_size=(64, 128), flow=dict(type="ground_truth"), affine=dict(scale=(0.5, 2.0), rotation=30.0))
