# CPU demo: PooDLe on the embedded synthetic video, light ResNet-14, same data and budget as the FlowE
# demo (64×128 crops of the 128×256 video, pairs 4 frames apart, exact flow). PooDLe's parts at this
# scale: a standard stride-32 encoder under the spatial decoder (stride-8 output), 6 subcrop pairs per
# view of 24×24 px (192/512 of the view height, as 192×192 crops of 512×1024 views), PooDLe's dense
# augmentation (±10°, scale 0.9–1.1, horizontal flip) and loss weights 0.5/0.5. Heads as the FlowE demo.
_base_ = ["./flowe_r14_synthetic_demo.py"]

model = dict(type="poodle", _delete_=True, encoder=dict(arch="resnet14", output_stride=32),
             decoder=dict(channels=2048, hidden_factor=0.5),
             projector=dict(hidden_channels=512, out_channels=128), predictor=dict(hidden_channels=512),
             pooled_projector=dict(hidden_channels=512, out_channels=128), pooled_predictor=dict(hidden_channels=512),
             subcrops=dict(num=6, scale=(0.05, 0.3), size=(24, 24), jitter=0.1),
             loss_weights=dict(dense=0.5, pooled=0.5), base_momentum=0.99, loss_resolution="feature")
data = dict(affine=dict(scale=(0.9, 1.1), rotation=10.0, hflip=0.5))
