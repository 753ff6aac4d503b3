# FlowE Table 4 ablation "video, no flow": identity flow between the two frames (16k iterations).
_base_ = ["./flowe_r50_frames.py"]

model = dict(flow=None)
data = dict(flow=dict(_delete_=True, type="identity"))
max_iters = 16000
