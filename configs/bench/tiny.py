# `flowssl bench --preset tiny`: the FlowE Table 1 ordering reproduced on the synthetic video, on CPU.
# Every method gets the same pretraining budget and the same frozen DeepLab v1 readout.
methods = dict(
    rand_init="configs/pretrain/rand_init_r14_synthetic_demo.py",
    byol="configs/pretrain/byol_r14_synthetic_demo.py",
    flowe="configs/pretrain/flowe_r14_synthetic_demo.py",
    flow_similarity="configs/pretrain/flow_similarity_r14_synthetic_demo.py",
)
checkpoints = dict()  # name="path/to/checkpoint.pth" to read out checkpoints trained elsewhere
pretrain_options = dict(max_iters=60, checkpoint_interval=60, num_workers=1, quiet=False)  # a progress bar
seeds = [0, 1, 2]
synthetic = dict(videos=dict(train=16, val=4), frames_per_video=4)  # readout data, written once
readouts = [
    dict(name="deeplabv1", framework="mmseg", dataset="synthetic",
         config="configs/mmseg/deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py",
         options={"train_cfg.max_iters": 300, "default_hooks.logger.interval": 100}),
]
