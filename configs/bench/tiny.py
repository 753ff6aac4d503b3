# `flowssl bench --preset tiny` (seed 0 is `flowssl demo`): FlowE Table 1's comparison on CPU, on world v3
# (pretrain/data/world_v3.py: objects large enough for a stride-8 readout, class = shape + a part family,
# colour says nothing) with the narrow OS8 encoder resnet10n (widths 16-128, 128 channels out).
#
# Fixed before any self-supervised run, from timings and the world's floor/ceiling only (README, "The tiny
# benchmark"): every method 600 iterations x batch 8 x 64x128 views (4800 samples, 10x the previous
# benchmark's 60 x 8), the clips and their exact flow rendered once per seed (clip_cache); the floor is Rand
# Init with BatchNorm recalibrated on the readout-train frames, the ceiling the oracle (the same encoder and
# budget, supervised on the pretraining videos' labels). Readouts of frozen features on held-out videos
# (16 train, 4 val x 4 frames at 128x256): the converged linear probe and dense kNN (pretrain/probe.py) and
# DeepLab v1 through MMSegmentation's own tools (one 1x1 conv, 300 iterations of batch 4).
# Flow classification, S3 and detectron2's C4 readout: configs/bench/tiny_extended.py.
methods = dict(
    rand_init="configs/pretrain/rand_init_r10n_v3_demo.py",
    byol="configs/pretrain/byol_r10n_v3_demo.py",
    flowe="configs/pretrain/flowe_r10n_v3_demo.py",
    poodle="configs/pretrain/poodle_r10n_v3_demo.py",
    flow_similarity="configs/pretrain/flow_similarity_r10n_v3_demo.py",
    oracle="configs/pretrain/oracle_r10n_v3_demo.py",
)
checkpoints = dict()  # name="path/to/checkpoint.pth" to read out checkpoints trained elsewhere
pretrain_options = dict(max_iters=600, checkpoint_interval=600, num_workers=1, quiet=False)  # a progress bar
clip_cache = True  # <work>/clips: every method of a seed reads the same rendered clips
seeds = [0, 1, 2]
synthetic = dict(videos=dict(train=16, val=4), frames_per_video=4, world="v3")  # readout data, written once
recalibrate_bn = ["rand_init"]  # the honest floor
readouts = [
    dict(name="linear_probe", framework="probe", dataset="synthetic"),
    dict(name="knn", framework="probe", dataset="synthetic"),
    dict(name="deeplabv1", framework="mmseg", dataset="synthetic",
         config="configs/mmseg/deeplabv1_flowssl-r10n-frozen_1xb4-300_synthetic-64x128.py",
         options={"train_cfg.max_iters": 300, "default_hooks.logger.interval": 100}),
]
