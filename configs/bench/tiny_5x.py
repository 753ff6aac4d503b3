# The tiny benchmark's follow-up measurement: does the gap between the methods grow with pretraining?
# Same world, readout data and frozen DeepLab v1 readout as `tiny_v2.py`, 5× its pretraining (300 iterations
# of batch 8), one seed, BYOL / FlowE / PooDLe (Rand Init is budget-free: tiny.py's row holds). ≈ 17 min
# on 2 CPU cores. Not a preset: `flowssl bench configs/bench/tiny_5x.py`.
_base_ = ["./tiny_v2.py"]

methods = dict(
    _delete_=True,
    byol="configs/pretrain/byol_r14_synthetic_demo.py",
    flowe="configs/pretrain/flowe_r14_synthetic_demo.py",
    poodle="configs/pretrain/poodle_r14_synthetic_demo.py",
)
pretrain_options = dict(max_iters=300, checkpoint_interval=300)
seeds = [0]
readouts = [
    dict(name="deeplabv1", framework="mmseg", dataset="synthetic",
         config="configs/mmseg/deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py",
         options={"train_cfg.max_iters": 300, "default_hooks.logger.interval": 100}),
]
