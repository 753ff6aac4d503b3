# FlowE Table 4 ablation "non pixel-based": global average pooling before the heads (16k iterations).
_base_ = ["./flowe_r50_frames.py"]

model = dict(dense=False, flow=None)
data = dict(flow=dict(_delete_=True, type="identity"))  # the pooled objective never reads the flow
max_iters = 16000
