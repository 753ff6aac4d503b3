# FlowE Table 1 "BYOL": frames treated like ImageNet images (§4.2 protocol: 512×1024 crops of
# frames upsampled to 1080×1920, LARS lr 0.1, wd 1e-6, batch 128 = 64 GPUs × 2, 60k iterations).
_base_ = ["./_base_/default_runtime.py"]

model = dict(type="byol", encoder=dict(arch="resnet50", output_stride=8),
             projector=dict(hidden_channels=4096, out_channels=256), predictor=dict(hidden_channels=4096),
             base_momentum=0.996)
data = dict(type="ImageFolderViews", root="data/bdd100k/frames/train", crop_size=(512, 1024),
            resize_to=(1080, 1920))
batch_size = 2          # per GPU
global_batch = 128      # the paper's 64 GPUs × 2: fewer GPUs accumulate (trainer: batch_plan)
optimizer = dict(type="LARS", lr=0.1, weight_decay=1e-6, momentum=0.9)
max_iters = 60000
checkpoint_interval = 5000
sync_bn = True
