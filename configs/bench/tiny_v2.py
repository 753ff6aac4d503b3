# The previous CPU benchmark (world v2 "crowded", ResNet-14, DeepLab v1 + Faster R-CNN C4), kept for comparison:
# `flowssl bench configs/bench/tiny_v2.py`. The preset `tiny` is configs/bench/tiny.py (world v3, resnet10n).
# Every method gets the same pretraining budget (iterations × batch 8 × 64×128 inputs of the 128×256
# video) and the same frozen readouts: DeepLab v1 (one 1×1 conv, mIoU) and, when detectron2 is
# installed, Faster R-CNN C4 (RPN + box head, bbox AP), trained on held-out readout videos (16 train,
# 4 val, never seen in pretraining) and scored on the val videos.
# Budget, set from per-iteration timings so that 3 seeds fit in 30 min on 2 CPU cores (README "Benchmarks
# and tables"): 60 pretraining iterations per method; DeepLab v1 300 iterations (batch 4); C4 30 iterations
# (batch 2) with the standard C4 head (res5 stride 2 on the pooled RoIs, 4× cheaper than the dilated one),
# 32 RoIs per image and 50 test proposals — the detection column is the most expensive one on CPU.
methods = dict(
    rand_init="configs/pretrain/rand_init_r14_synthetic_demo.py",
    byol="configs/pretrain/byol_r14_synthetic_demo.py",
    flowe="configs/pretrain/flowe_r14_synthetic_demo.py",
    flow_similarity="configs/pretrain/flow_similarity_r14_synthetic_demo.py",
    flow_classification="configs/pretrain/flow_classification_r14_synthetic_demo.py",
    s3_affine="configs/pretrain/s3_affine_r14_synthetic_demo.py",
    poodle="configs/pretrain/poodle_r14_synthetic_demo.py",
)
checkpoints = dict()  # name="path/to/checkpoint.pth" to read out checkpoints trained elsewhere
pretrain_options = dict(max_iters=60, checkpoint_interval=60, num_workers=1, quiet=False)  # a progress bar
seeds = [0, 1, 2]
synthetic = dict(videos=dict(train=16, val=4), frames_per_video=4)  # readout data, written once
readouts = [
    dict(name="deeplabv1", framework="mmseg", dataset="synthetic",
         config="configs/mmseg/deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py",
         options={"train_cfg.max_iters": 300, "default_hooks.logger.interval": 100}),
    dict(name="c4", framework="d2", dataset="synthetic",
         config="configs/d2/faster_rcnn_flowssl_R14_C4_synthetic_tiny.yaml",
         options={"SOLVER.MAX_ITER": 30, "MODEL.FLOWSSL.RES5_DILATION": 1, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 32,
                  "MODEL.RPN.POST_NMS_TOPK_TEST": 50}),
]
