# FlowE Table 4 "full model" at the ablation budget (16k iterations), for a like-for-like comparison.
_base_ = ["./flowe_r50_frames.py"]

max_iters = 16000
