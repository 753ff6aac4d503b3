# Synthetic "BYOL (crop)": windowed crops of one frame.
_base_ = ["./byol_r14_synthetic_demo.py"]

data = dict(type="SyntheticPairs", _delete_=True, num_videos=64, num_frames=32, frame_gap=4, height=128, width=256,
            crop_size=(128, 256), flow=None, mode="byol", same_frame=True, window=0.5, view_size=(64, 128))
