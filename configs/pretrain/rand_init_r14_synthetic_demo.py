_base_ = ["./rand_init_r50.py"]

model = dict(encoder=dict(arch="resnet14"))
