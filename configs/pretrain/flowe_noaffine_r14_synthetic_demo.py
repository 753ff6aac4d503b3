_base_ = ["./flowe_r14_synthetic_demo.py"]

data = dict(affine=dict(scale=(1.0, 1.0), rotation=0.0))
