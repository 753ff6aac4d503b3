# FlowE on folders of frames, UrbanCity style (§4.1-4.2): 10 fps sequences, pairs 0.4 s (4 frames)
# apart, random scale 0.75-1.25 and 512×1024 crops, 160k iterations (80 epochs of 256k frames).
_base_ = ["./_base_/flowe_r50.py"]

data = dict(type="FrameFolderPairs", root="data/frames", interval=4, crop_size=(512, 1024),
            scale_range=(0.75, 1.25), flow=None, affine=dict(scale=(0.5, 2.0), rotation=30.0))
max_iters = 160000
