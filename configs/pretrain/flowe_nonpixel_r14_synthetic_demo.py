_base_ = ["./flowe_r14_synthetic_demo.py"]

model = dict(dense=False)
