# Issue 23's learning curve, one point: BYOL and FlowE at 4x the tiny benchmark's pretraining (2400
# iterations x batch 8), otherwise as tiny_curve_0.25x.py (the 1x point is configs/bench/tiny.py's).
# Not a preset: `flowssl bench configs/bench/tiny_curve_4x.py`.
_base_ = ["./tiny_curve_0.25x.py"]

pretrain_options = dict(max_iters=2400, checkpoint_interval=600)
