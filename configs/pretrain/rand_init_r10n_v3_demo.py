# The CPU benchmark's floor (configs/bench/tiny.py): the narrow resnet10n at its random initialisation;
# the plan's recalibrate_bn re-estimates its BatchNorm statistics on the readout-train frames.
_base_ = ["./rand_init_r10n_synthetic_demo.py"]
