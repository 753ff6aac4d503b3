# The embedded synthetic video written in the Cityscapes layout (`flowssl demo` writes it to
# work_dirs/demo/data/synthetic_cityscapes). Tiny: for CPU tests and the demo.
dataset_type = "SyntheticCityscapesDataset"
data_root = "work_dirs/demo/data/synthetic_cityscapes/"
crop_size = (64, 128)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False, sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline,
                 data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train")))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline,
                 data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val")))
test_dataloader = val_dataloader
