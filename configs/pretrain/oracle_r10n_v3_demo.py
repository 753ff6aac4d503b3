# The CPU benchmark's ceiling (configs/bench/tiny.py): resnet10n trained supervised on the v3
# pretraining videos' labels (oracle_r14_synthetic_demo.py), same views and budget as every method.
_base_ = ["./oracle_r14_synthetic_demo.py"]

model = dict(encoder=dict(arch="resnet10n"))
data = dict(world="v3")
# lr 3e-3: the ceiling's one hyperparameter chosen from the oracle's own runs, before any self-supervised
# run (seed 0, probe mIoU on v3 one step before its final appearance: lr 1e-3 48.5, 3e-3 58.6, 1e-2 54.1)
optimizer = dict(lr=3e-3)
