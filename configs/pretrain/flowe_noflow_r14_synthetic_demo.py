_base_ = ["./flowe_r14_synthetic_demo.py"]

data = dict(flow=dict(type="identity"))
