# The CPU benchmark's ceiling (configs/bench/tiny.py): resnet10n trained supervised on the v3
# pretraining videos' labels (oracle_r14_synthetic_demo.py), same views and budget as every method.
_base_ = ["./oracle_r14_synthetic_demo.py"]

model = dict(encoder=dict(arch="resnet10n"))
data = dict(world="v3")
