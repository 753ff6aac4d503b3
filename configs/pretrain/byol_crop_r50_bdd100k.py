# FlowE Table 1 "BYOL (crop)": both BYOL crops from one small window (half the 512×1024 crop's side)
# of the same BDD100K frame.
_base_ = ["./byol_r50_bdd100k.py"]

data = dict(type="VideoPairs", _delete_=True, root="data/bdd100k/videos/train", interval_s=0.5,
            resize_to=(1080, 1920), crop_size=(512, 1024), scale_range=(0.75, 1.25), flow=None,
            mode="byol", same_frame=True, window=0.5, view_size=(512, 1024))
