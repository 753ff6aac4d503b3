# FlowE Table 4 ablation "without random affine": views are the cropped frames (16k iterations).
_base_ = ["./flowe_r50_frames.py"]

data = dict(affine=dict(scale=(1.0, 1.0), rotation=0.0))
max_iters = 16000
