# Shared data/optimiser for the single-image flow objectives (cross-pixel similarity, flow
# classification, S3): one BDD100K frame and its DIS flow to the frame 0.5 s later; the same
# trainer budget as FlowE so the readout tables compare like with like.
_base_ = ["./default_runtime.py"]

data = dict(type="VideoPairs", root="data/bdd100k/videos/train", interval_s=0.5, resize_to=(1080, 1920),
            crop_size=(512, 1024), scale_range=(0.75, 1.25), flow=dict(type="dis"),
            affine=dict(scale=(1.0, 1.0), rotation=0.0))
batch_size = 2            # frames per GPU
global_batch = 128        # FlowE's budget (see above); fewer GPUs accumulate
optimizer = dict(type="LARS", lr=0.1, weight_decay=1e-6, momentum=0.9)
sync_bn = True
max_iters = 60000
checkpoint_interval = 5000
