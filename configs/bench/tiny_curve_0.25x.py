# Issue 23's learning curve, one point: BYOL and FlowE at 0.25x the tiny benchmark's pretraining (150
# iterations x batch 8), everything else as configs/bench/tiny.py, one seed, the feature readouts only
# (the 1x point is tiny.py's; 4x: tiny_curve_4x.py). Not a preset: `flowssl bench configs/bench/tiny_curve_0.25x.py`.
_base_ = ["./tiny.py"]

methods = dict(
    _delete_=True,
    byol="configs/pretrain/byol_r10n_v3_demo.py",
    flowe="configs/pretrain/flowe_r10n_v3_demo.py",
)
pretrain_options = dict(max_iters=150, checkpoint_interval=150)
seeds = [0]
recalibrate_bn = []
readouts = [
    dict(name="linear_probe", framework="probe", dataset="synthetic"),
    dict(name="knn", framework="probe", dataset="synthetic"),
]
