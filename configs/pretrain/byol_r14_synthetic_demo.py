# CPU demo: BYOL on the embedded synthetic video with the light ResNet-14 (OS8), a few minutes.
# Random resized 64×128 views of whole 128×256 frames (BYOL's crops, FlowE Table 1's "BYOL").
_base_ = ["./_base_/default_runtime.py"]

model = dict(type="byol", encoder=dict(arch="resnet14", output_stride=8),
             projector=dict(hidden_channels=512, out_channels=128), predictor=dict(hidden_channels=512),
             base_momentum=0.99)
data = dict(type="SyntheticFrames", num_videos=64, num_frames=32, height=128, width=256,
            crop_size=(64, 128), crop_scale=(0.2, 1.0))
batch_size = 8
optimizer = dict(type="LARS", lr=0.2, weight_decay=1e-6, momentum=0.9)
lr_schedule = dict(warmup_iters=10, min_lr_factor=0.0)
max_iters = 150
checkpoint_interval = 50
num_workers = 1
log_interval = 5
