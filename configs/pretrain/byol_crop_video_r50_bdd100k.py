# FlowE Table 1 "BYOL (crop w/ video)": the same windowed crops, taken from two frames 0.5 s apart.
_base_ = ["./byol_crop_r50_bdd100k.py"]

data = dict(same_frame=False)
