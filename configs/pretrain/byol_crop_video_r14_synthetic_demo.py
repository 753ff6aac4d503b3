# Synthetic "BYOL (crop w/ video)": windowed crops at the same place of two frames.
_base_ = ["./byol_crop_r14_synthetic_demo.py"]

data = dict(same_frame=False)
