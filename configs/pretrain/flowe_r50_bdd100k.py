# FlowE on BDD100K videos (§4.1-4.2): pairs 0.5 s apart from the 70k training .mov files, frames
# upsampled to 1080×1920, random scale 0.75-1.25, a 512×1024 crop at the same place in both frames,
# 60k iterations (~110 epochs).
_base_ = ["./_base_/flowe_r50.py"]

data = dict(type="VideoPairs", root="data/bdd100k/videos/train", interval_s=0.5, resize_to=(1080, 1920),
            crop_size=(512, 1024), scale_range=(0.75, 1.25), flow=None,
            affine=dict(scale=(0.5, 2.0), rotation=30.0))
max_iters = 60000
