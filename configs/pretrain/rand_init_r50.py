# FlowE Table 1 "Rand Init": readout from a random projection. `flowssl pretrain` writes the seeded
# torchvision initialisation as a checkpoint (iteration 0) in the common format.
_base_ = ["./_base_/default_runtime.py"]

model = dict(type="rand_init", encoder=dict(arch="resnet50", output_stride=8))
data = dict(type="SyntheticFrames")  # never read
optimizer = dict(type="SGD", lr=0.0)
batch_size = 1
max_iters = 1
checkpoint_interval = 1
